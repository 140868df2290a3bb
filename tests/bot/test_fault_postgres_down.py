"""Fault: Postgres down for 30 s while two bot pods capture live traffic.

The bots keep their unflushed rows, stop reading the gateway when the buffer is full (Discord
keeps the events), and flush when Postgres is back: every family equals the ledger — nothing
lost, nothing twice — with the buffer and memory bounded throughout. Voice seconds shift by at
most the time an event waited unread (the bot stamps voice by receive time).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herwa.devstack import DevStack, Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.fault_families import invoke, scenario, settle_every_family, snapshots_taken
from tests.bot.test_faults import metric, rss_kb

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
BUFFER_ROWS = 1000


@pytest.fixture
async def traffic_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=21,
        history_rate=(50, 0.2),
        scenario=scenario(21),
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
    )
    async with Simulator(config) as s:
        yield s


async def test_fault_postgres_down_30s(
    traffic_sim: Simulator, own_postgres: tuple[DevStack, Endpoints], tmp_path: Path
) -> None:
    sim = traffic_sim
    stack, ep = own_postgres
    dsn = ep.postgres_dsn
    # The guarantee rests on an acknowledged commit surviving the outage, as it does with
    # Postgres' default; the dev stack runs with synchronous_commit=off, which can lose the
    # last commits if its stop escalates to SIGKILL.
    (name,) = await pg(dsn, "SELECT current_database() AS name")
    await pg(dsn, f'ALTER DATABASE "{name["name"]}" SET synchronous_commit = on')
    (setting,) = await pg(dsn, "SELECT current_setting('synchronous_commit') AS s")
    assert setting["s"] == "on"
    fleet = Fleet(sim, ep, tmp_path, {"HERWA_BOT_BUFFER_MAX_ROWS": str(BUFFER_ROWS)})
    try:
        for n in split_names(2):
            await fleet.start(n)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        await wait_for(lambda: _synced(sim), 15, "the command list synced")
        snapshots = await snapshots_taken(sim, dsn)
        guilds = sorted(sim.world.guilds)
        assert await invoke(sim, guilds) == len(guilds)
        rss_before = {n: rss_kb(b.proc.pid) for n, b in fleet.bots.items()}  # type: ignore[union-attr]

        sim.start_activity(300)
        await asyncio.sleep(1.0)
        down_ms = sim.now_ms()
        await asyncio.to_thread(stack.down)
        await asyncio.sleep(OUTAGE_S)
        depth = {
            n: metric(await b.metrics(), "herwa_bot_buffer_depth_rows")
            for n, b in fleet.bots.items()
        }
        rss_during = {n: rss_kb(b.proc.pid) for n, b in fleet.bots.items()}  # type: ignore[union-attr]
        assert all(b.alive for b in fleet.bots.values())
        await asyncio.to_thread(stack.up)
        await asyncio.sleep(1.0)
        await sim.stop_activity()
        # Commands after the outage, in every guild: the bots answer and count them.
        assert await invoke(sim, guilds, timeout=60) == len(guilds)

        compared = await settle_every_family(
            sim,
            dsn,
            ep.redis_url,
            snapshots,
            timeout=90,
            paused_from=down_ms,
            diagnose=lambda: _state(fleet, sim),
        )
        for n, b in fleet.bots.items():
            text = await b.metrics()
            dropped = [
                ln for ln in text.splitlines() if ln.startswith("herwa_bot_rows_dropped_total")
            ]
            assert dropped
            assert all(ln.endswith(" 0.0") for ln in dropped), dropped
            assert metric(text, 'herwa_bot_flush_failures_total{stage="postgres"}') > 0
            # Bounded: the buffer never held more than its capacity (+ one event's rows).
            assert depth[n] <= BUFFER_ROWS + 10
            assert rss_during[n] - rss_before[n] < 150_000, (rss_before, rss_during)
        print(f"compared with the ledger after {OUTAGE_S:.0f}s without Postgres: {compared}")
        print(f"buffer depth during the outage={depth}")
    finally:
        await fleet.stop()


async def _synced(sim: Simulator) -> bool:
    return sim.app.find_command("usage", None) is not None


async def _state(fleet: Fleet, sim: Simulator) -> str:
    """The bots' capture metrics and the simulator's gateway view, for a failure message."""
    lines = [f"sim sessions per shard={fleet.sim_sessions()} backlog={sim.gateway.backlog()}"]
    for name, bot in fleet.bots.items():
        text = await bot.metrics()
        lines += [
            f"{name}: {ln}"
            for ln in text.splitlines()
            if ln.startswith(
                ("herwa_bot_buffer", "herwa_bot_rows", "herwa_bot_flush", "herwa_bot_gateway")
            )
        ]
    return "\n".join(lines)
