"""Scaling while traffic flows: 1 bot → 3 bots → 2 bots.

Sampled every 50 ms: no shard is ever connected in two bots (nor has two live gateway
connections in the simulator); every shard is connected again within RECONNECT_BOUND_S; at the
end Postgres equals the ledger for every family (no event delivered to a shard is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from herwa.simulator import Simulator
from tests.bot.conftest import SHARDS, Fleet, wait_for
from tests.bot.expect import settle
from tests.bot.gateway_sessions import gateway_sessions

pytestmark = pytest.mark.slow

RECONNECT_BOUND_S = 5.0
RATE = 300  # events/s


class Watch:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.double: list[str] = []
        self.down_since: dict[int, float] = {}
        self.longest_gap = 0.0
        self.samples = 0

    async def run(self) -> None:
        while True:
            st = await self.fleet.status()
            owners: Counter[int] = Counter()
            for s in st.values():
                owners.update(s.get("shards_connected", []))
            sims = self.fleet.sim_sessions()
            now = time.monotonic()
            for shard in range(SHARDS):
                if owners[shard] > 1 or sims[shard] > 1:
                    self.double.append(f"shard {shard}: bots={owners[shard]} sim={sims[shard]}")
                if owners[shard] == 0:
                    self.down_since.setdefault(shard, now)
                elif shard in self.down_since:
                    self.longest_gap = max(self.longest_gap, now - self.down_since.pop(shard))
            for since in self.down_since.values():
                self.longest_gap = max(self.longest_gap, now - since)
            self.samples += 1
            await asyncio.sleep(0.05)


async def test_grow_to_three_and_shrink_to_two_under_traffic(fleet: Fleet, sim: Simulator) -> None:
    dsn = fleet.endpoints.postgres_dsn
    await fleet.start("bot-a")
    await wait_for(fleet.all_connected, 30, "one bot owning every shard")
    watch = Watch(fleet)
    watcher = asyncio.create_task(watch.run())
    sim.start_activity(RATE)
    try:
        await asyncio.sleep(1.0)
        await fleet.start("bot-b")
        await fleet.start("bot-c")
        await wait_for(
            lambda: fleet.all_connected(["bot-a", "bot-b", "bot-c"]),
            20,
            "three bots sharing the shards",
        )
        st = await fleet.status()
        assert sum(bool(s["shards_owned"]) for s in st.values()) >= 2
        await asyncio.sleep(1.0)
        fleet.bots["bot-b"].signal(15)
        assert await fleet.bots["bot-b"].wait_exit(20) == 0
        await wait_for(
            lambda: fleet.all_connected(["bot-a", "bot-c"]), 20, "two bots owning every shard"
        )
        await asyncio.sleep(1.0)
    finally:
        await sim.stop_activity()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    async def diagnose() -> str:
        lines = []
        for name, bot in fleet.bots.items():
            if bot.alive:
                lines.append(f"{name} sessions: {dict(gateway_sessions(await bot.metrics()))}")
            lines.append(f"{name} log:\n{bot.tail(60)}")
        return "\n".join(lines)

    await settle(sim, dsn, content=False, timeout=30, diagnose=diagnose)
    print(
        f"samples={watch.samples} longest shard gap={watch.longest_gap:.2f}s "
        f"emitted={sum(sim.ledger.events_emitted.values())} "
        f"undelivered={len(sim.ledger.undelivered)}"
    )
    assert watch.samples > 50
    assert not watch.double, watch.double[:5]
    assert watch.longest_gap < RECONNECT_BOUND_S
