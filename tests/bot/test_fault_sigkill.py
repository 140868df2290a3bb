"""Fault: a bot pod SIGKILLed mid-traffic and started again under the same identity.

Whatever the killed pod had read but not flushed is gone from its memory; its shards' gateway
sessions are still resumable, so the restarted pod RESUMEs every one of them from the marks
committed in Postgres (its metrics count a resume and no identify per shard) and Discord
replays what followed. Every family must equal the ledger: the replay fills the gap,
and rows already stored must not be stored again.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herwa.bot.sharding import assigned_shards
from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import SHARDS, Fleet, split_names, wait_for
from tests.bot.fault_families import invoke, scenario, settle_every_family, snapshots_taken
from tests.bot.gateway_sessions import gateway_sessions, opened_by
from tests.bot.test_presence import subscribe_presence

pytestmark = pytest.mark.slow


@pytest.fixture
async def traffic_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=31,
        history_rate=(50, 0.2),
        scenario=scenario(31, presence=True),
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
    )
    async with Simulator(config) as s:
        yield s


async def test_fault_sigkill_bot_mid_traffic(
    traffic_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    sim = traffic_sim
    dsn = migrated.postgres_dsn
    # Presence is recorded in one guild (its subscription grants it): rows keyed by receive time.
    granted = sorted(sim.world.guilds)
    await subscribe_presence(dsn, granted[0], granted[1])
    fleet = Fleet(sim, migrated, tmp_path, {"HERWA_BOT_PRESENCE_CAPTURE": "true"})
    try:
        a, b = split_names(2)
        await fleet.start(a)
        await fleet.start(b)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        await wait_for(lambda: _synced(sim), 15, "the command list synced")
        snapshots = await snapshots_taken(sim, dsn)
        guilds = sorted(sim.world.guilds)
        assert await invoke(sim, guilds) == len(guilds)

        sim.start_activity(300)
        await asyncio.sleep(1.5)
        # From here b's shards go unread until its replacement RESUMEs: a voice join or leave
        # replayed then is stamped when it is read (the bot's receive time), as documented.
        killed_ms = sim.now_ms()
        fleet.bots[b].signal(signal.SIGKILL)
        assert await fleet.bots[b].wait_exit(5) == -signal.SIGKILL
        await asyncio.sleep(1.5)  # traffic goes on; b's shards have no reader
        await fleet.start(b)  # the same pod name: the same shards, the marks in Postgres
        await wait_for(fleet.all_connected, 30, "both bots connected again")
        # Every shard the killed pod held was RESUMEd by its replacement; none re-identified.
        held_by_b = assigned_shards([a, b], b, SHARDS)
        sessions = gateway_sessions(await fleet.bots[b].metrics())
        assert opened_by(sessions, held_by_b, "resume") == dict.fromkeys(sorted(held_by_b), 1)
        assert opened_by(sessions, held_by_b, "identify") == dict.fromkeys(sorted(held_by_b), 0)
        await asyncio.sleep(1.0)
        await sim.stop_activity()
        assert await invoke(sim, guilds) == len(guilds)

        # Discord held events for the dead pod's sessions and replayed them on RESUME.
        held = sum(1 for d in sim.ledger.deliveries if not d.connected)
        assert held > 0
        compared = await settle_every_family(
            sim,
            dsn,
            migrated.redis_url,
            snapshots,
            timeout=60,
            paused_from=killed_ms,
            diagnose=lambda: _state(fleet),
            presence={granted[0]},
        )
        print(f"compared with the ledger after a SIGKILL: {compared}; held for RESUME: {held}")
    finally:
        await fleet.stop()


async def _synced(sim: Simulator) -> bool:
    return sim.app.find_command("usage", None) is not None


async def _state(fleet: Fleet) -> str:
    lines = [f"sim sessions per shard={fleet.sim_sessions()}"]
    for name, bot in fleet.bots.items():
        if bot.alive:
            text = await bot.metrics()
            lines += [
                f"{name}: {ln}"
                for ln in text.splitlines()
                if ln.startswith(("herwa_bot_rows", "herwa_bot_gateway", "herwa_bot_backfill"))
            ]
    return "\n".join(lines)
