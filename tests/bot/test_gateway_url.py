"""The gateway a bot connects to is the one ``GET /gateway/bot`` announces.

Discord's gateway host is not its REST host: with only ``HERWA_DISCORD_API_BASE`` set (a REST
proxy, or a Discord-compatible server) the bot must not derive a websocket path from the REST
base. The simulator here serves its websocket on a path of its own, announced by
``GET /gateway/bot`` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import BotProcess, Fleet, wait_for
from tests.bot.expect import settle

pytestmark = pytest.mark.slow


@pytest.fixture
async def elsewhere_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=4,
        seed=13,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
        gateway_path="/gateway-elsewhere/v10",
    )
    async with Simulator(config) as s:
        yield s


async def test_only_the_api_base_set_connects_where_gateway_bot_says(
    elsewhere_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    sim = elsewhere_sim
    fleet = Fleet(sim, migrated, tmp_path)
    env = fleet.env("bot-0")
    del env["HERWA_DISCORD_GATEWAY_URL"]
    assert "HERWA_DISCORD_API_BASE" in env
    bot = BotProcess("bot-0", env, tmp_path)
    fleet.bots[bot.name] = bot
    try:
        await bot.start()
        await wait_for(fleet.all_connected, 30, "every shard connected through /gateway/bot's URL")
        sim.step(400)
        # Every family compared; voice seconds (receive-time stamps, which measure the host's
        # load rather than where the bot connected) are the e2e and fault tests' subject.
        await settle(sim, migrated.postgres_dsn, content=False, timeout=30, voice_seconds=False)
    finally:
        await fleet.stop()
