"""What the bot keeps of a GUILD_CREATE: the bots among the members, not every member."""

from __future__ import annotations

import random

from herwa.bot.capture import guild_payload
from herwa.simulator import User, World, WorldConfig


def test_guild_payload_keeps_only_the_bot_members() -> None:
    # A simulated world's own GUILD_CREATE: 200 members, three of them bots besides Herwa.
    herwa = User(1, "herwa", None, bot=True)
    world = World(
        WorldConfig(guilds=1, members_per_guild=(200, 200), bots_per_guild=3),
        random.Random(3),
        herwa,
    )
    (guild,) = world.guilds.values()
    raw = guild.create_payload(bot=world.bot_member(guild), include_members=True)
    assert len(raw["members"]) == len(guild.members) > 200

    kept = guild_payload(raw)

    assert kept is not None
    bots = {uid for uid, m in guild.members.items() if m.user.bot}
    assert len(bots) == 4  # the three and Herwa
    # Queued until the guild's metadata is written: members would multiply its memory.
    assert {m["user"]["id"] for m in kept["members"]} == bots
    assert all(m["user"]["bot"] for m in kept["members"])
    assert kept["member_count"] == len(guild.members)
