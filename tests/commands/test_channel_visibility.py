"""/channels and the leaderboards count only channels the invoking member can view.

The server has a staff channel: @everyone is denied View Channel there, a staff role is allowed
it (Discord's permission overwrites, as GUILD_CREATE delivers them to real discord.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herwa.devstack import Endpoints
from herwa.simulator import Simulator
from tests.commands.conftest import Harness, build_dataset, opt, start_harness, stop_harness

WEEK = [opt("days", 7), opt("end", "2024-03-10")]
VIEW_CHANNEL = 1 << 10
STAFF_ROLE = 424_242_424_242_424_242
MEMBER_PERMISSIONS = 1071698660929  # @everyone's in the simulator: View Channel, no Manage Server


def _staff_channel(sim: Simulator) -> None:
    """The second text channel of the first guild (the data set's C2) becomes staff-only, and
    the fourth member (U4) gets the staff role."""
    guild = sim.world.guilds[min(sim.world.guilds)]
    guild.roles.append(
        {
            "id": str(STAFF_ROLE),
            "name": "staff",
            "permissions": "0",
            "position": 1,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
    )
    c2 = sorted(c.id for c in guild.channels.values() if c.type == 0)[1]
    guild.channels[c2].overwrites = [
        {"id": str(guild.id), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)},
        {"id": str(STAFF_ROLE), "type": 0, "allow": str(VIEW_CHANNEL), "deny": "0"},
    ]
    others = sorted(
        uid for uid, m in guild.members.items() if uid != guild.owner_id and not m.user.bot
    )
    guild.members[others[2]].role_ids.append(STAFF_ROLE)  # U4 (users[3])


@pytest.fixture
async def staff(migrated: Endpoints) -> AsyncIterator[Harness]:
    h, extra = await start_harness(migrated, prepare=_staff_channel)
    try:
        yield h
    finally:
        await stop_harness(h, extra)


def _description(result: dict[str, object]) -> str:
    original = result["original"]
    assert isinstance(original, dict)
    (e,) = original["embeds"]
    return str(e["description"])


async def test_members_see_only_channels_they_can_view(staff: Harness) -> None:
    h = staff
    await build_dataset(h)
    await h.grant("enterprise")
    u1, u2, u3, u4 = h.users[:4]
    c1, c2 = h.channels[:2]

    # Staff first, so that a reply cached for them would be what the member gets next.
    as_staff = await h.invoke("channels", WEEK, user=u4, permissions=MEMBER_PERMISSIONS)
    assert _description(as_staff).endswith(
        f"1. <#{c1}> — 7 messages, 2 authors\n2. <#{c2}> — 2 messages, 1 authors"
    )
    as_member = await h.invoke("channels", WEEK, user=u3, permissions=MEMBER_PERMISSIONS)
    assert _description(as_member).endswith(f"1. <#{c1}> — 7 messages, 2 authors")
    assert f"<#{c2}>" not in _description(as_member)
    denied = await h.invoke(
        "channels", [*WEEK, opt("channel", f"<#{c2}>")], user=u3, permissions=MEMBER_PERMISSIONS
    )
    assert "channels you can view" in denied["original"]["content"]

    # U2 wrote only in the staff channel: on the staff's board, not on the member's.
    pages = [
        _description(
            await h.invoke(
                "leaderboard", [*WEEK, opt("page", n)], user=u4, permissions=MEMBER_PERMISSIONS
            )
        )
        for n in (1, 2)
    ]
    assert f"<@{u2}> — 2 messages" in "\n".join(pages)  # page size 2; U2 and U3 tie
    board = await h.invoke("leaderboard", WEEK, user=u3, permissions=MEMBER_PERMISSIONS)
    assert f"<@{u2}>" not in _description(board)
    assert _description(board).endswith(f"1. <@{u1}> — 5 messages\n2. <@{u3}> — 2 messages")

    # Voice happened in a channel the server no longer lists: Manage Server only.
    voice = await h.invoke("voice-leaderboard", WEEK, user=u3, permissions=MEMBER_PERMISSIONS)
    assert _description(voice).endswith("No activity in this range.")
    voice = await h.invoke("voice-leaderboard", WEEK)  # the owner
    assert _description(voice).endswith(f"1. <@{u2}> — 1 h 30 min\n2. <@{u1}> — 30 min")
    # The owner sees every channel, the staff one included.
    owner = await h.invoke("channels", WEEK)
    assert f"<#{c2}> — 2 messages" in _description(owner)
