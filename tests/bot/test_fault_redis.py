"""Fault tests: Redis restarted with its persistence, and Redis emptied, while two bots capture
live traffic and serve commands. Afterwards every event family (messages, edits, deletions,
joins, leaves, voice sessions and seconds, member-count snapshots, command usage) equals the
simulator's ledger, and the monthly quota counts every use once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from herwa import platform, usage
from herwa.devstack import DevStack, Endpoints
from herwa.simulator import GatewayConfig, ScenarioConfig, Simulator, SimulatorConfig
from tests.bot.conftest import SHARDS, Fleet, pg, split_names, wait_for
from tests.bot.expect import (
    VOICE_BOUNDARY_S,
    VOICE_SLACK_S,
    actual_voice,
    compare_all,
    expected_voice,
)
from tests.commands.conftest import text_of

pytestmark = pytest.mark.slow

QUOTA = 500
PREFIX = "herwa:"  # the bots' default HERWA_REDIS_KEY_PREFIX


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The bot tests' simulator, except that only the test invokes commands (as each guild's
    owner, who never leaves): every invocation is then answered, and usage and quota can be
    compared exactly."""
    families = {k: v for k, v in ScenarioConfig().families.items() if k != "command"}
    config = SimulatorConfig(
        guilds=8,
        seed=11,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
        scenario=ScenarioConfig(seed=11, families=families),
    )
    async with Simulator(config) as s:
        yield s


async def _subscribe(dsn: str, guild_id: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await platform.seed(conn, platform.load())
        features = await conn.fetchval(
            "SELECT array_agg(feature ORDER BY feature) FROM tier_features WHERE tier = 'pro'"
        )
        await conn.execute(
            "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
            " source_name, source_uid) VALUES ($1, 'pro', $2, $3::jsonb, 'ns', 'sub', 'uid')",
            guild_id,
            features,
            json.dumps({"queries_per_month": QUOTA, "history_days": 365}),
        )
    finally:
        await conn.close()


async def _overviews(sim: Simulator, guild_id: int, days: range) -> None:
    """Quota-counted commands; distinct ranges, so none is answered from the result cache."""
    for d in days:
        reply = await sim.invoke_command(
            guild_id, "overview", [{"name": "days", "type": 4, "value": d}], timeout=20
        )
        assert "Server overview" in text_of(reply), reply


async def _snapshots(dsn: str) -> dict[int, int]:
    rows = await pg(
        dsn,
        "SELECT guild_id, member_count FROM member_count_snapshots WHERE day = $1",
        datetime.now(UTC).date(),
    )
    return {r["guild_id"]: r["member_count"] for r in rows}


def _member_counts(sim: Simulator) -> dict[int, int]:
    return {g.id: len(g.members) for g in sim.world.guilds.values()}


async def _usage_counts(dsn: str, redis_url: str) -> Counter[tuple[int, str]]:
    """(guild, command) → invocations on record, after the ETL's drain of Redis counters."""
    redis = Redis.from_url(redis_url)
    conn = await asyncpg.connect(dsn)
    try:
        await usage.drain(redis, PREFIX, conn)
        rows = await conn.fetch(
            "SELECT guild_id, command, sum(invocations) AS n FROM command_usage GROUP BY 1, 2"
        )
    finally:
        await conn.close()
        await redis.aclose()
    return Counter({(r["guild_id"], r["command"]): int(r["n"]) for r in rows})


def _voice_events(sim: Simulator, first: int, last: int) -> Counter[int]:
    """Voice events per guild among the simulator's deliveries ``first:last``."""
    return Counter(
        d.guild_id
        for d in sim.ledger.deliveries[first:last]
        if d.event == "VOICE_STATE_UPDATE" and d.guild_id is not None
    )


async def _fault_scenario(
    sim: Simulator,
    stack: DevStack,
    ep: Endpoints,
    tmp_path: Path,
    fault: Callable[[], Awaitable[None]],
) -> None:
    dsn = ep.postgres_dsn
    # One member invokes every command: the per-user rate limit is not what is tested here.
    fleet = Fleet(sim, ep, tmp_path, {"HERWA_COMMANDS_RATE_LIMIT_COUNT": "100"})
    guilds = sorted(sim.world.guilds)
    subscribed, unsubscribed = guilds[0], guilds[-1]
    try:
        await _subscribe(dsn, subscribed)
        for n in split_names(2):
            await fleet.start(n)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        await wait_for(
            lambda: _published(sim), 15, "global commands synced by the owner of shard 0"
        )
        # Every guild's snapshot for today is taken before any member joins or leaves, so it
        # must equal the count the simulator had then, whatever Redis goes through later.
        counts_before = _member_counts(sim)

        async def snapshots_taken() -> bool:
            return set(await _snapshots(dsn)) == set(guilds)

        await wait_for(snapshots_taken, 30, "today's member-count snapshots")

        sim.start_activity(300)
        await _overviews(sim, subscribed, range(1, 4))
        await sim.invoke_command(unsubscribed, "overview", timeout=20)
        await asyncio.sleep(1.0)
        fault_started = time.monotonic()
        first = len(sim.ledger.deliveries)
        await fault()

        async def reconnected() -> bool:
            # Until the pods notice the fault their readiness still shows the shards they had:
            # wait for every lease to be held again (both faults remove them) and then for
            # every shard to be connected in exactly one pod.
            return await _leases_held(ep.redis_url) and await fleet.all_connected()

        await wait_for(reconnected, 60, "every shard leased and connected again after the fault")
        outage = time.monotonic() - fault_started
        during = _voice_events(sim, first, len(sim.ledger.deliveries))
        assert all(b.alive for b in fleet.bots.values())
        await _overviews(sim, subscribed, range(4, 7))
        await sim.invoke_command(unsubscribed, "overview", timeout=20)
        await asyncio.sleep(1.0)
        await sim.stop_activity()
        sim.end_voice_sessions()

        # Counts of every family are exact: nothing lost, nothing stored twice.
        problems: list[str] = []

        async def equal() -> bool:
            nonlocal problems
            problems = await compare_all(sim, dsn, content=False, voice_seconds=False)
            return not problems

        try:
            await wait_for(equal, 45, "Postgres to equal the ledger", interval=0.25)
        except AssertionError:
            raise AssertionError("\n".join(problems)) from None

        # Voice seconds: the bot stamps by receive time, so an event sent while its shard was
        # closing, closed or being resumed reaches it (on RESUME) up to the outage late; every
        # other boundary is allowed what the live tests allow.
        actual = await actual_voice(dsn)
        for gid, (secs, boundaries) in expected_voice(sim).items():
            allowed = VOICE_BOUNDARY_S * boundaries + VOICE_SLACK_S + during[gid] * outage
            got = actual.get(gid, 0.0)
            assert abs(got - secs) <= allowed, (gid, secs, got, allowed)

        assert await _snapshots(dsn) == counts_before

        expected_usage = Counter(
            {
                (gid, name): n
                for gid, g in sim.ledger.guilds.items()
                for name, n in g.commands.items()
            }
        )

        recorded: Counter[tuple[int, str]] = Counter()

        async def usage_recorded() -> bool:
            nonlocal recorded
            recorded = await _usage_counts(dsn, ep.redis_url)
            return recorded == expected_usage

        try:
            await wait_for(usage_recorded, 15, "every invocation's usage on record")
        except AssertionError:
            raise AssertionError(f"usage: expected {expected_usage} got {recorded}") from None

        # The quota counts every use once: six before and after the fault, none lost.
        reply = await sim.invoke_command(subscribed, "usage", timeout=20)
        assert f"Queries: 6 of {QUOTA}" in text_of(reply), text_of(reply)
        for b in fleet.bots.values():
            assert 'herwa_bot_rows_dropped_total{table="member_events"} 0.0' in await b.metrics()
        print(
            f"fault survived: outage {outage:.1f}s, ledger {sim.ledger.summary()['events_emitted']}"
        )
    finally:
        with contextlib.suppress(Exception):
            await fleet.stop()


async def _leases_held(redis_url: str) -> bool:
    redis = Redis.from_url(redis_url)
    try:
        held = await redis.exists(*(f"{PREFIX}bot:lease:{SHARDS}:{s}" for s in range(SHARDS)))
    finally:
        await redis.aclose()
    return int(held) == SHARDS


async def _published(sim: Simulator) -> bool:
    return sim.app.find_command("overview", None) is not None


async def test_fault_redis_restarted_with_persistence(
    sim: Simulator, own_redis: tuple[DevStack, Endpoints], tmp_path: Path
) -> None:
    """Redis stops (saving its snapshot) for three seconds, longer than the shard leases, and
    comes back with its data: leases expire, the shards close and are opened again."""
    stack, ep = own_redis

    async def restart() -> None:
        await asyncio.to_thread(stack.down)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(stack.up)

    await _fault_scenario(sim, stack, ep, tmp_path, restart)


async def test_fault_redis_emptied(
    sim: Simulator, own_redis: tuple[DevStack, Endpoints], tmp_path: Path
) -> None:
    """Every key is gone at once (a failover to an empty replica, FLUSHALL, a lost volume):
    leases, membership, caches — and nothing acknowledged may go with them."""
    stack, ep = own_redis

    async def empty() -> None:
        redis = Redis.from_url(ep.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()

    await _fault_scenario(sim, stack, ep, tmp_path, empty)
