"""/reactions and /overview's reactions answer with the exact numbers of a constructed data set,
and a member sees only the reactions in channels they can view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from tests.commands.conftest import (
    D0,
    Harness,
    fields_of,
    opt,
    start_harness,
    stop_harness,
    text_of,
)
from tests.commands.test_channel_visibility import MEMBER_PERMISSIONS, _staff_channel

WEEK = [opt("days", 7), opt("end", "2024-03-10")]
M1, M2, M3, M4, M9 = 2_000_001, 2_000_002, 2_000_003, 2_000_004, 2_000_009
CUSTOM = "1100000000000000123"


@pytest.fixture
async def staff(migrated: Endpoints) -> AsyncIterator[Harness]:
    h, extra = await start_harness(migrated, prepare=_staff_channel)
    try:
        yield h
    finally:
        await stop_harness(h, extra)


async def _stage(h: Harness) -> None:
    """In the week: M1 (C1) 👍 by U1 and U2, 🎉 by U3 then taken back; M2 (C2, staff only) 👍
    by U4 and :party: by U2; M3 (C1, deleted) 🔥 by all four; M4 (C1) 👍 by U1. Outside it: M4
    👍 by U2 a week later, and the other guild's reactions."""
    u1, u2, u3, u4 = h.users[:4]
    c1, c2 = h.channels[:2]
    mon, tue = D0 + timedelta(hours=10), D0 + timedelta(days=1, hours=10)
    rows = [
        (h.guild, c1, M1, u1, "👍", None, "add", mon),
        (h.guild, c1, M1, u2, "👍", None, "add", mon),
        (h.guild, c1, M1, u3, "🎉", None, "add", mon),
        (h.guild, c1, M1, u3, "🎉", None, "remove", tue),
        (h.guild, c2, M2, u4, "👍", None, "add", mon),
        (h.guild, c2, M2, u2, CUSTOM, "party", "add", tue),
        *[(h.guild, c1, M3, u, "🔥", None, "add", tue) for u in (u1, u2, u3, u4)],
        (h.guild, c1, M4, u1, "👍", None, "add", tue),
        (h.guild, c1, M4, u2, "👍", None, "add", mon + timedelta(days=8)),
        *[(h.other, 9, M9, 700 + i, "👍", None, "add", mon) for i in range(20)],
    ]
    await h.pool.executemany(
        "INSERT INTO message_reactions (guild_id, channel_id, message_id, user_id, emoji,"
        " emoji_name, event, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        rows,
    )
    await h.pool.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES ($1, $2, $3, $4)",
        M3,
        h.guild,
        c1,
        tue + timedelta(hours=1),
    )
    result = await run_once(
        h.endpoints.postgres_dsn,
        h.endpoints.clickhouse_url,
        None,
        RunOptions(retention_hours=24 * 365 * 10, expire_history=False),
    )
    assert result.outcome == "caught_up", result.error


def _link(h: Harness, channel: int, message: int) -> str:
    return f"https://discord.com/channels/{h.guild}/{channel}/{message}"


async def test_reactions_exact_and_only_in_viewable_channels(staff: Harness) -> None:
    h = staff
    await _stage(h)
    await h.grant("pro")
    u3 = h.users[2]
    c1, c2 = h.channels[:2]

    overview = await h.invoke("overview", WEEK)
    assert fields_of(overview)["Reactions"] == "10"

    owner = await h.invoke("reactions", WEEK)
    text = text_of(owner)
    assert "2024-03-04 to 2024-03-10 (UTC)" in text
    assert "10 reactions added by 4 members, 1 removed." in text
    # M3 was deleted: its reactions count, but it is not listed (its link leads nowhere).
    assert text.endswith(
        "**Most reacted messages**\n"
        f"1. {_link(h, c1, M1)} — 3 reactions from 3 members\n"
        f"2. {_link(h, c2, M2)} — 2 reactions from 2 members\n"
        f"3. {_link(h, c1, M4)} — 1 reactions from 1 members\n"
        "Top emoji: 1. 👍 — 4\n2. 🔥 — 4\n3. :party: — 1\n4. 🎉 — 1"
    )

    # A member without the staff role: nothing of the staff channel.
    member = await h.invoke("reactions", WEEK, user=u3, permissions=MEMBER_PERMISSIONS)
    text = text_of(member)
    assert "8 reactions added by 4 members, 1 removed." in text
    assert str(M2) not in text
    assert ":party:" not in text
    assert fields_of(member)["Top emoji"] == "1. 🔥 — 4\n2. 👍 — 3\n3. 🎉 — 1"

    # A range without reactions, and the free tier, which does not include the command.
    empty = await h.invoke("reactions", [opt("days", 1), opt("end", "2024-03-09")])
    assert "No reactions in this range." in text_of(empty)
    await h.grant("free")
    denied = await h.invoke("reactions", WEEK)
    assert "part of the **pro** tier" in text_of(denied)
