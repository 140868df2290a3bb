"""Backfill's pending marker (``bot_backfill_pending``): committed with the gateway mark that
covers the GUILD_CREATE, removed only with the backfilled rows, so the shard's next owner
finishes what its last owner did not — a pod that dies while Postgres is down, a shard handed
over (RESUMEd: no GUILD_CREATE starts it again), Redis emptied mid-backfill."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from herwa.bot.app import BotApp
from herwa.bot.backfill import BackfillOp
from herwa.bot.capture import snowflake_time
from herwa.bot.shard import ShardRunner
from herwa.config import BotSettings, DiscordSettings
from herwa.devstack import DevStack, Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.expect import actual_messages, expected_messages
from tests.bot.gateway_sessions import gateway_sessions

pytestmark = pytest.mark.slow


async def test_backfill_keeps_its_marker_until_its_rows_are_committed(
    own_postgres: tuple[DevStack, Endpoints],
) -> None:
    stack, ep = own_postgres
    pool = await asyncpg.create_pool(ep.postgres_dsn, min_size=0, max_size=2)
    redis = Redis.from_url(ep.redis_url)
    app = BotApp(
        settings=BotSettings(),
        discord_settings=DiscordSettings(),
        pool=pool,
        redis=redis,
        prefix=f"t{uuid.uuid4().hex[:8]}:",
        pod="bot-0",
        token="token",
        shard_count=1,
        max_concurrency=1,
    )
    guild = 81_000_000_000_000_000
    message = guild + 1
    await _own_shard(app, "lease-0")
    # Flushed by hand only: whatever the last flush could not commit stays in this pod's memory
    # and dies with it.
    try:
        # The GUILD_CREATE's flush commits the marker; the backfill then reads a message and
        # Postgres goes away before the flush that would commit it (and remove the marker).
        app.buffer.add_extra(BackfillOp(0, guild, message, done=False))
        assert await app.buffer.flush(10)
        await asyncio.to_thread(stack.down)
        app.buffer.add(
            "message_events",
            (message, guild, 7, None, 9, snowflake_time(message), "text", False, "backfill"),
        )
        app.buffer.add_extra(BackfillOp(0, guild, message, done=True))
        assert not await app.buffer.flush(0.5)
        # The pod dies here with the row in its memory: the marker must still name the guild.
        await asyncio.to_thread(stack.up)
        assert await _pending(pool) == {guild: message}

        # The next owner of the shard backfills the guild again (its rows, then the done op).
        fresh = BotApp(
            settings=BotSettings(),
            discord_settings=DiscordSettings(),
            pool=pool,
            redis=redis,
            prefix=f"t{uuid.uuid4().hex[:8]}:",
            pod="bot-1",
            token="token",
            shard_count=1,
            max_concurrency=1,
        )
        await _own_shard(fresh, "lease-1")
        fresh.buffer.start()
        try:
            fresh.buffer.add(
                "message_events",
                (message, guild, 7, None, 9, snowflake_time(message), "text", False, "backfill"),
            )
            fresh.buffer.add_extra(BackfillOp(0, guild, message, done=True))
            await wait_for(lambda: _none_pending(pool), 30, "the marker removed with its rows")
        finally:
            await fresh.buffer.close(5.0)
        stored = await pool.fetchval(
            "SELECT created_at FROM message_events WHERE message_id = $1", message
        )
        assert stored == snowflake_time(message)
        assert stored < datetime.now(UTC)
    finally:
        await pool.close()
        await redis.aclose()


async def _own_shard(app: BotApp, lease: str) -> ShardRunner:
    """Take shard 0 as its owner does: its Postgres fence, then the runner."""
    runner = ShardRunner(app.shard_deps, 0, lease)
    await runner.load_state()
    app.runners[0] = runner
    return runner


async def _pending(pool: asyncpg.Pool) -> dict[int, int]:
    rows = await pool.fetch("SELECT guild_id, until_id FROM bot_backfill_pending")
    return {r["guild_id"]: r["until_id"] for r in rows}


async def _none_pending(pool: asyncpg.Pool) -> bool:
    return not await _pending(pool)


@pytest.fixture
async def slow_history_sim() -> AsyncIterator[Simulator]:
    # History readable at one page a second per channel: the backfill is still running when
    # Redis goes.
    config = SimulatorConfig(
        guilds=8,
        seed=47,
        history_rate=(1, 1.0),
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
    )
    async with Simulator(config) as s:
        # Well inside the backfill window (24 h by default), so every message is in reach.
        s.create_history(days=0.5, messages_per_day=16_000)
        yield s


async def test_backfill_cut_short_by_redis_loss_is_finished(
    slow_history_sim: Simulator, own_redis: tuple[DevStack, Endpoints], tmp_path: Path
) -> None:
    """Redis emptied mid-backfill: the pod's leases go, every shard closes and is RESUMEd (no
    GUILD_CREATE starts a backfill again), and a second pod joining moves shards away in the
    middle of it too. Every backfill pending in Postgres is finished by the shard's owner."""
    sim = slow_history_sim
    _, ep = own_redis
    dsn = ep.postgres_dsn
    fleet = Fleet(sim, ep, tmp_path)
    expected = expected_messages(sim, content=False)  # the bots run without MESSAGE_CONTENT
    total = sum(expected.values())
    try:
        a, b = split_names(2)
        await fleet.start(a)

        async def backfilling() -> bool:
            stored = sum((await actual_messages(dsn)).values())
            return 0 < stored < total // 2

        await wait_for(backfilling, 30, "the backfill under way")
        redis = Redis.from_url(ep.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        await fleet.start(b)
        await wait_for(fleet.all_connected, 30, "both bots connected")

        async def complete() -> bool:
            # Every message stored, and every backfill known finished (its marker gone).
            pending = await pg(dsn, "SELECT guild_id FROM bot_backfill_pending")
            return not pending and await actual_messages(dsn) == expected

        try:
            took = await wait_for(complete, 90, "every backfill finished", interval=0.5)
        except AssertionError:
            stored = sum((await actual_messages(dsn)).values())
            pending = await pg(dsn, "SELECT * FROM bot_backfill_pending")
            raise AssertionError(
                f"stored {stored} of {total}; pending {pending}\n"
                + "\n".join(f"{n}:\n{bot.tail(30)}" for n, bot in fleet.bots.items())
            ) from None
        sessions = [gateway_sessions(await fleet.bots[n].metrics()) for n in (a, b)]
        print(f"backfilled {total} messages across Redis loss and a handover in {took:.1f}s")
        print(f"gateway sessions: {sessions}")
    finally:
        await fleet.stop()
