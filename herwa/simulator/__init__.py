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
from herwa.simulator._command_options import (
    STRING,
    SUB_COMMAND,
    SUB_COMMAND_GROUP,
    build_invocation,
    check_choices,
    check_registration,
)
from herwa.simulator._gateway import (
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILD_PRESENCES,
    GUILD_VOICE_STATES,
    GUILDS,
    MESSAGE_CONTENT,
    GatewayConfig,
)
from herwa.simulator._ledger import (
    Delivery,
    Ledger,
    MemberEventRecord,
    MessageRecord,
    PresenceRecord,
    ReactionRecord,
    VoiceRecord,
)
from herwa.simulator._simulator import DEFAULT_TOKEN, Simulator, SimulatorConfig
from herwa.simulator._snowflake import DISCORD_EPOCH_MS
from herwa.simulator._world import (
    EVERYONE_PERMISSIONS,
    TEXT,
    Guild,
    Member,
    ShowcaseConfig,
    User,
    World,
    WorldConfig,
)
from herwa.simulator.client import point_discord_at

__all__ = [
    "DEFAULT_TOKEN",
    "DISCORD_EPOCH_MS",
    "EVERYONE_PERMISSIONS",
    "GUILDS",
    "GUILD_MEMBERS",
    "GUILD_MESSAGES",
    "GUILD_MESSAGE_REACTIONS",
    "GUILD_PRESENCES",
    "GUILD_VOICE_STATES",
    "MESSAGE_CONTENT",
    "STRING",
    "SUB_COMMAND",
    "SUB_COMMAND_GROUP",
    "TEXT",
    "Delivery",
    "GatewayConfig",
    "Guild",
    "Ledger",
    "Member",
    "MemberEventRecord",
    "MessageRecord",
    "PresenceRecord",
    "ReactionRecord",
    "ScenarioConfig",
    "ShowcaseConfig",
    "Simulator",
    "SimulatorConfig",
    "User",
    "VoiceRecord",
    "World",
    "WorldConfig",
    "build_invocation",
    "check_choices",
    "check_registration",
    "point_discord_at",
]
