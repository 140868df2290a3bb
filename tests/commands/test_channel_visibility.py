"""/channels and the leaderboards count only channels the invoking member can view.

The server has a staff channel: @everyone is denied View Channel there, a staff role is allowed
it (Discord's permission overwrites, as GUILD_CREATE delivers them to real discord.py)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from herwa import platform
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.simulator import Simulator, SimulatorConfig
from tests.bot.conftest import Fleet, wait_for
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


async def test_a_pod_that_resumed_the_session_still_knows_who_sees_what(
    migrated: Endpoints, tmp_path: Path
) -> None:
    """A restarted ``herwa bot`` RESUMEs its sessions and gets no GUILD_CREATE, so discord.py
    knows neither roles nor overwrites: the commands must still answer per member."""
    sim = Simulator(SimulatorConfig(guilds=2, seed=11))
    _staff_channel(sim)
    async with sim:
        fleet = Fleet(sim, migrated, tmp_path)
        try:
            guild = min(sim.world.guilds)
            g = sim.world.guilds[guild]
            others = sorted(u for u, m in g.members.items() if u != g.owner_id and not m.user.bot)
            u1, u2, u3, u4 = g.owner_id, *others[:3]
            c1, c2 = sorted(c.id for c in g.channels.values() if c.type == 0)[:2]
            await _stage_recent(migrated, guild, [(c1, u1), (c1, u1), (c1, u3), (c2, u2)])
            await fleet.start("bot-0")
            await wait_for(fleet.all_connected, 60, "the bot connected")
            fleet.bots["bot-0"].signal(signal.SIGTERM)
            assert await fleet.bots["bot-0"].wait_exit(30) == 0
            await fleet.start("bot-0")
            await wait_for(fleet.all_connected, 60, "the bot connected again")
            events = await fleet.bots["bot-0"].metrics()
            assert 'type="RESUMED"' in events
            assert 'type="GUILD_CREATE"' not in events

            async def channels(user: int) -> str:
                result = await sim.invoke_command(
                    guild, "channels", [], user_id=user, permissions=MEMBER_PERMISSIONS, timeout=30
                )
                return _description(result)

            assert channels_line(c2, 1) in await channels(u4)
            as_member = await channels(u3)
            assert channels_line(c1, 3) in as_member
            assert f"<#{c2}>" not in as_member
        finally:
            await fleet.stop()


def channels_line(channel: int, messages: int) -> str:
    return f"<#{channel}> — {messages} messages"


async def _stage_recent(endpoints: Endpoints, guild: int, messages: list[tuple[int, int]]) -> None:
    """(channel, author) messages of the last hour, loaded by the ETL, and a subscription."""
    pool = await asyncpg.create_pool(endpoints.postgres_dsn, min_size=1, max_size=2)
    try:
        await platform.seed(pool, platform.load())
        now = datetime.now(UTC) - timedelta(minutes=30)
        await pool.executemany(
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
            " kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', false)",
            [(9_000 + i, guild, c, a, now) for i, (c, a) in enumerate(messages)],
        )
        await pool.execute(
            "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
            " source_name, source_uid) SELECT $1, 'enterprise', array_agg(feature),"
            " '{\"queries_per_month\": 1000}'::jsonb, 'ns', 'sub', 'uid' FROM tier_features"
            " WHERE tier = 'enterprise'",
            guild,
        )
    finally:
        await pool.close()
    result = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, RunOptions())
    assert result.outcome == "caught_up", result.error
