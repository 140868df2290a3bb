"""End to end: two `herwa bot` processes share the shards of a simulated Discord; for every
event family Postgres ends up equal to the simulator's ledger."""

from __future__ import annotations

import asyncio

import pytest

from herwa.simulator import Simulator
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.expect import settle
from tests.bot.test_presence import subscribe_presence

pytestmark = pytest.mark.slow


async def emit(sim: Simulator, total: int, *, seconds: float) -> None:
    """``total`` random events spread over ``seconds`` of wall time (voice needs real time),
    and a tenth as many presence updates (not in the default scenario)."""
    chunks = 20
    for _ in range(chunks):
        sim.step(total // chunks)
        sim.step(total // chunks // 10, family="presence")
        await asyncio.sleep(seconds / chunks)


async def test_two_bots_capture_every_family_exactly(fleet: Fleet, sim: Simulator) -> None:
    fleet.extra_env["HERWA_DISCORD_MESSAGE_CONTENT_INTENT"] = "true"
    # Presence: one guild's subscription grants it, one's does not, the rest are free.
    fleet.extra_env["HERWA_BOT_PRESENCE_CAPTURE"] = "true"
    dsn = fleet.endpoints.postgres_dsn
    guilds = sorted(sim.world.guilds)
    await subscribe_presence(dsn, guilds[0], guilds[1])
    names = split_names(2)
    for n in names:
        await fleet.start(n)
    took = await wait_for(fleet.all_connected, 30, "all shards connected once")
    assert max(fleet.sim_sessions().values()) == 1
    # The daily snapshot (hour 0 UTC: due at once) before any member joins or leaves.
    initial = {g.id: len(g.members) for g in sim.world.guilds.values()}
    try:
        await wait_for(lambda: _snapshots(dsn, len(initial)), 15, "member-count snapshots")
    except AssertionError:
        for b in fleet.bots.values():
            print(b.name, await b.readyz())
            print(
                "\n".join(
                    line
                    for line in (await b.metrics()).splitlines()
                    if "herwa_bot" in line and not line.startswith("#")
                )
            )
        raise
    rows = await pg(dsn, "SELECT guild_id, member_count FROM member_count_snapshots")
    assert {r["guild_id"]: r["member_count"] for r in rows} == initial

    await emit(sim, 3000, seconds=3.0)
    matched = await settle(sim, dsn, content=True, timeout=20, presence={guilds[0]})
    print(
        f"connected in {took:.1f}s; ledger matched {matched:.1f}s "
        f"after traffic; {sim.ledger.summary()['events_emitted']}"
    )
    for bot in fleet.bots.values():
        assert 'herwa_bot_rows_dropped_total{table="message_events"} 0.0' in await bot.metrics()


async def _snapshots(dsn: str, n: int) -> bool:
    rows = await pg(dsn, "SELECT count(*) AS n FROM member_count_snapshots")
    return bool(rows[0]["n"] == n)
