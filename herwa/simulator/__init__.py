"""A protocol-level Discord for tests, benchmarks and the demo.

The real discord.py client connects to it over a real websocket (gateway v10) and REST; the
simulator generates guild activity from a seeded scenario and keeps a ground-truth ledger of
everything it emitted.

    async with Simulator(SimulatorConfig(guilds=4, seed=7)) as sim:
        point_discord_at(sim.api_base, sim.ws_url)
        ...
        sim.step(100)
        sim.ledger.summary()
"""

from herwa.simulator._activity import ScenarioConfig
from herwa.simulator._gateway import GatewayConfig
from herwa.simulator._ledger import (
    Delivery,
    Ledger,
    MemberEventRecord,
    MessageRecord,
    VoiceRecord,
)
from herwa.simulator._simulator import DEFAULT_TOKEN, Simulator, SimulatorConfig
from herwa.simulator._world import WorldConfig
from herwa.simulator.client import point_discord_at

__all__ = [
    "DEFAULT_TOKEN",
    "Delivery",
    "GatewayConfig",
    "Ledger",
    "MemberEventRecord",
    "MessageRecord",
    "ScenarioConfig",
    "Simulator",
    "SimulatorConfig",
    "VoiceRecord",
    "WorldConfig",
    "point_discord_at",
]
