"""A pod that starts many shards in one coordination round keeps the leases of those it has
started: a round of slow starts (a slow login, a loaded machine) outlasts a lease renewed only at
its beginning, and the pod used to close its own first shards (self-fencing) and start again."""

from __future__ import annotations

import pytest

from herwa.simulator import Simulator
from tests.bot.conftest import SHARDS, Fleet, wait_for
from tests.bot.gateway_sessions import gateway_sessions

pytestmark = pytest.mark.slow


async def test_a_round_of_slow_starts_fences_nothing(fleet: Fleet, sim: Simulator) -> None:
    # A 2 s lease fences after 1.2 s; four starts that each wait 0.8 s for the login take 3.2 s.
    sim.app.login_delay_s = 0.8
    bot = await fleet.start("bot-0")
    await wait_for(fleet.all_connected, 30, "every shard connected")
    sessions = gateway_sessions(await bot.metrics())
    opened = {s: sessions[(s, "identify")] + sessions[(s, "resume")] for s in range(SHARDS)}
    assert opened == dict.fromkeys(range(SHARDS), 1), opened
    assert "not renewed" not in bot.tail(400)
