"""Rows Postgres refuses, against a real Postgres: the buffer bisects the batch, sets each refused
row aside in ``dead_letter_rows`` and commits everything else; the metadata writer does the same
for guild and channel rows (issue 18, item 1)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from herwa.bot.buffer import FlushBuffer
from herwa.bot.guild_settings import GuildConfig
from herwa.bot.metadata import upsert_meta
from herwa.devstack import Endpoints

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def message(i: int, kind: str = "text") -> tuple[object, ...]:
    return (10_000 + i, 1, 2, None, 3, T0 + timedelta(seconds=i), kind, False, "gateway")


def _dead(table: str) -> float:
    value = REGISTRY.get_sample_value("herwa_bot_dead_letter_rows_total", {"table": table})
    return value or 0.0


async def test_refused_rows_are_set_aside_and_everything_else_commits(
    migrated: Endpoints,
) -> None:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=2)
    buf = FlushBuffer(pool, interval=30.0, max_rows=100_000, capacity=100_000)
    before = {t: _dead(t) for t in ("message_events", "guild_events", "voice_sessions")}
    buf.start()
    try:
        for i in range(500):
            buf.add("message_events", message(i))
        # The reproductions, as the old capture built them from GUILD_CREATE: a member
        # count beyond integer, and one sent as a string.
        buf.add("guild_events", (1, "join", T0, 2**31))
        buf.add("guild_events", (2, "join", T0, "12"))
        buf.add("guild_events", (3, "join", T0, 12))
        # A NUL byte Postgres refuses in text, a CHECK violation, an id beyond bigint.
        buf.add("message_events", message(600, kind="te\x00xt"))
        buf.add("message_events", message(601, kind="shouting"))
        buf.add("message_events", (2**64, 1, 2, None, 3, T0, "text", False, "gateway"))
        for i in range(500, 520):
            buf.add("message_events", message(i))
        joined, left = T0, T0 - timedelta(seconds=5)  # left before joined: a CHECK violation
        buf.add(
            "voice_sessions",
            (uuid.uuid4(), 1, 50, 7, "voice", joined, left, 0.0, "leave", False),
        )
        buf.add(
            "voice_sessions",
            (
                uuid.uuid4(),
                1,
                50,
                8,
                "voice",
                joined,
                T0 + timedelta(seconds=5),
                0.0,
                "leave",
                False,
            ),
        )
        assert await buf.flush(20.0), "a refused row must not hold the batch back"
        assert await pool.fetchval("SELECT count(*) FROM message_events") == 520
        assert await pool.fetchval("SELECT array_agg(guild_id) FROM guild_events") == [3]
        assert await pool.fetchval("SELECT array_agg(user_id) FROM voice_sessions") == [8]
        dead = await pool.fetch(
            "SELECT table_name, row, reason, sqlstate, guild_id, user_id FROM dead_letter_rows "
            "ORDER BY dead_letter_id"
        )
        by_table: dict[str, list[Any]] = {}
        for r in dead:
            by_table.setdefault(r["table_name"], []).append(r)
        assert len(by_table["guild_events"]) == 2
        assert len(by_table["message_events"]) == 3
        assert len(by_table["voice_sessions"]) == 1
        assert all(r["reason"] for r in dead)
        # The refused values are kept, escaped where Postgres could not hold them as they are.
        kinds = {r["row"] for r in by_table["message_events"]}
        assert any("'te\\\\x00xt'" in k for k in kinds), kinds
        assert any('"message_id": "18446744073709551616"' in k for k in kinds), kinds
        assert {r["guild_id"] for r in by_table["guild_events"]} == {1, 2}
        assert by_table["voice_sessions"][0]["user_id"] == 7
        assert _dead("message_events") - before["message_events"] == 3
        assert _dead("guild_events") - before["guild_events"] == 2
        assert _dead("voice_sessions") - before["voice_sessions"] == 1
        # The buffer goes on: the next batch commits, the refused rows are not retried.
        buf.add("message_events", message(700))
        assert await buf.flush(5.0)
        assert await pool.fetchval("SELECT count(*) FROM message_events") == 521
        assert await pool.fetchval("SELECT count(*) FROM dead_letter_rows") == 6
        assert buf.failing_since is None
    finally:
        await buf.close(5.0)
        await pool.close()


async def test_metadata_writer_sets_aside_a_refused_name_and_writes_the_rest(
    migrated: Endpoints,
) -> None:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    before = {t: _dead(t) for t in ("guilds", "channels")}
    try:
        settings = GuildConfig()
        guild = {
            "id": "100",
            "name": "ok\x00not",  # NUL: refused by text
            "joined_at": "2025-01-01T00:00:00+00:00",
            "channels": [
                {"id": "201", "type": 0, "name": "general"},
                {"id": "202", "type": 0, "name": "bad\x00name"},
                {"id": "203", "type": 2, "name": "voice"},
            ],
        }
        await upsert_meta(conn, "guild", guild, settings)
        await upsert_meta(conn, "guild", {"id": "101", "name": "fine"}, settings)
        await upsert_meta(conn, "channel", (101, {"id": "204", "name": "after"}), settings)
        assert [tuple(r) for r in await conn.fetch("SELECT guild_id, name FROM guilds")] == [
            (101, "fine")
        ]
        channels = await conn.fetch("SELECT channel_id, name FROM channels ORDER BY 1")
        assert [tuple(r) for r in channels] == [
            (201, "general"),
            (203, "voice"),
            (204, "after"),
        ]
        dead = await conn.fetch(
            "SELECT table_name, guild_id, sqlstate FROM dead_letter_rows ORDER BY dead_letter_id"
        )
        assert [(r["table_name"], r["guild_id"]) for r in dead] == [
            ("guilds", 100),
            ("channels", 100),
        ]
        assert all(r["sqlstate"] == "22021" for r in dead)  # invalid byte sequence (NUL)
        assert {t: _dead(t) - before[t] for t in before} == {"guilds": 1, "channels": 1}
    finally:
        await conn.close()
