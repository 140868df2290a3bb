"""Fault: Redis goes silent for one pod (packets dropped, nothing closed) for longer than the
shard lease, while the other pod still reaches it.

The silent pod must close its shards before their leases can lapse — on its own clock, since
no Redis call returns (each one only times out) — so the other pod takes them over without a
moment in which two pods read one shard; when Redis answers again the shards are shared out
as before, and every event family in Postgres equals the simulator's ledger: messages, edits,
deletions, joins, leaves, voice sessions and seconds, the member-count snapshots and command
usage. The new owner RESUMEs from the mark the silent pod committed in Postgres with its rows;
rows keyed by receive time (leaves, voice sessions) that the silent pod flushes after it lost
the shard are fenced by the shard's epoch, so the replay stores them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import FAST_ENV, SHARDS, BotProcess, Fleet, split_names, wait_for
from tests.bot.fault_families import invoke, scenario, settle_every_family, snapshots_taken
from tests.bot.proxy import TcpProxy

pytestmark = pytest.mark.slow

LEASE_S = float(FAST_ENV["HERWA_BOT_MEMBER_TTL_SECONDS"])


@pytest.fixture
async def traffic_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=17,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
        scenario=scenario(17),
    )
    async with Simulator(config) as s:
        yield s


class ShardWatch:
    """Asks both pods which shards they read, over and over until stopped: every shard seen
    in both answers of one round. (The simulator cannot tell: like Discord, it closes the
    older connection when a session is resumed or replaced, so two pods reading one shard
    show there as one connection taken back and forth.)"""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.both: set[int] = set()
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        bots = list(self.fleet.bots.values())
        while True:
            answers = await asyncio.gather(*(b.readyz() for b in bots), return_exceptions=True)
            held = [set(a["shards_connected"]) for a in answers if isinstance(a, dict)]
            if len(held) == len(bots):
                self.both |= set.intersection(*held)
                self.rounds += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_fault_redis_silent_longer_than_lease(
    traffic_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    sim = traffic_sim
    redis = urlsplit(migrated.redis_url)
    proxy = await TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379).start()
    fleet = Fleet(sim, migrated, tmp_path)
    watch = ShardWatch(fleet)
    silent_name, other_name = split_names(2)
    try:
        env = fleet.env(silent_name)
        env["HERWA_REDIS_URL"] = _via(migrated.redis_url, proxy.port)
        silent = BotProcess(silent_name, env, tmp_path)
        fleet.bots[silent_name] = silent
        await silent.start()
        other = await fleet.start(other_name)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        held_before = sorted((await silent.readyz())["shards_connected"])
        assert held_before
        await wait_for(lambda: _synced(sim), 15, "the command list synced")
        snapshots = await snapshots_taken(sim, migrated.postgres_dsn)
        guilds = sorted(sim.world.guilds)
        assert await invoke(sim, guilds) == len(guilds)
        watch.start()
        sim.start_activity(200)
        await asyncio.sleep(1.0)  # traffic flowing through both pods

        proxy.silence()
        silent_at = time.monotonic()
        # From here the silent pod's shards may go unread until the other pod RESUMEs them: a
        # voice join or leave replayed then is stamped when it is read, as documented.
        silent_ms = sim.now_ms()

        async def silent_pod_fenced() -> bool:
            return not (await silent.readyz())["shards_connected"]

        fenced = await wait_for(silent_pod_fenced, LEASE_S * 3, "the silent pod closed its shards")

        async def other_pod_took_all() -> bool:
            st = await other.readyz()
            return sorted(st["shards_connected"]) == list(range(SHARDS))

        took = await wait_for(other_pod_took_all, 30, "the reachable pod holds every shard")
        assert silent.alive
        # Keep Redis silent for longer than a lease, whatever the two waits above took.
        await asyncio.sleep(max(0.0, silent_at + 2 * LEASE_S - time.monotonic()))
        proxy.restore()

        async def shared_as_before() -> bool:
            held = sorted((await silent.readyz())["shards_connected"])
            return held == held_before and await fleet.all_connected()

        back = await wait_for(shared_as_before, 30, "the shards shared out as before")
        await asyncio.sleep(1.0)
        await sim.stop_activity()
        assert await invoke(sim, guilds) == len(guilds)
        started = time.monotonic()
        compared = await settle_every_family(
            sim,
            migrated.postgres_dsn,
            migrated.redis_url,
            snapshots,
            timeout=60,
            paused_from=silent_ms,
        )
        matched = time.monotonic() - started
        await watch.stop()
        assert watch.rounds > 50
        assert not watch.both, f"shards read by both pods at once: {sorted(watch.both)}"
        for bot in fleet.bots.values():
            assert 'herwa_bot_rows_dropped_total{table="message_events"} 0.0' in (
                await bot.metrics()
            )
        summary = sim.ledger.summary()
        print(
            f"fenced {fenced:.1f}s after silence, taken over after {took:.1f}s more, "
            f"shared again {back:.1f}s after Redis answered, ledger matched {matched:.1f}s "
            f"after traffic; {watch.rounds} rounds of both pods' answers; "
            f"compared with the ledger: {compared}; {summary['events_emitted']}"
        )
    finally:
        await watch.stop()
        await fleet.stop()
        await proxy.stop()


async def _synced(sim: Simulator) -> bool:
    return sim.app.find_command("usage", None) is not None
