"""Upgrades across migrations that change what the ETL reads or writes: staging rows written
before postgres migration 0006 (staged_xid) are loaded exactly once, the week rollups are
unchanged by ClickHouse 0012 (the daily rollup retired, the weeks summed from the author days),
ClickHouse 0013 builds every guild's local weeks in UTC from the week rollups, harmlessly
again when re-run, and the first run after 0014 writes the voice weeks of sessions loaded before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from herwa.analytics.retention import recorded_zone
from herwa.devstack import Endpoints
from herwa.etl import rollups
from herwa.etl.runner import RunOptions, run_once
from herwa.schema import (
    apply_clickhouse,
    apply_postgres,
    clickhouse_history,
    discover,
    migrate,
    postgres_history,
)
from herwa.stores import clickhouse_url_client
from tests.etl._support import pending_rows, stage_messages
from tests.support.rollups import RAW_WEEKS

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

_BEFORE = 6  # the first postgres migration that knows staged_xid


async def _migrate_postgres_below(pg: asyncpg.Connection, version: int) -> None:
    """The schema as a release before ``version`` left it, recorded like `herwa migrate` does."""
    await postgres_history(pg)
    for migration in discover("postgres"):
        if migration.version >= version:
            break
        await apply_postgres(pg, migration)


async def test_rows_staged_before_the_upgrade_are_loaded_once(endpoints: Endpoints) -> None:
    pg = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        await _migrate_postgres_below(pg, _BEFORE)
        await stage_messages(pg, range(1, 301))
        # 1-100 went to ClickHouse under the old release (their copies there are not part of
        # this test: the new release must simply not load them again).
        await pg.execute("UPDATE message_events SET ch_ingested_at = now() WHERE message_id <= 100")
        report = await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
        assert _BEFORE in report.applied["postgres"]
        legacy = await pg.fetch(
            "SELECT message_id, staged_xid::text::bigint AS x FROM message_events ORDER BY 1"
        )
        assert {r["x"] for r in legacy[:100]} == {0}
        # Pending rows keep the id of the transaction that staged them: 50 rows each.
        pending_xids = [r["x"] for r in legacy[100:]]
        assert len(set(pending_xids)) == 4
        assert min(pending_xids) > 1

        result = await run_once(
            endpoints.postgres_dsn, endpoints.clickhouse_url, None, RunOptions(batch_rows=100)
        )
        assert result.outcome == "caught_up", result.error
        assert result.stats.rows_moved["message_events"] == 200
        assert await pending_rows(pg, "message_events") == 0
    finally:
        await pg.close()
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        ids = await ch.query("SELECT message_id FROM messages FINAL ORDER BY message_id")
        assert [r[0] for r in ids.result_rows] == list(range(101, 301))
    finally:
        await ch.close()


_DAILY_RETIRED = 12  # the ClickHouse migration that retires message_activity_daily
_LOCAL_WEEKS = 13  # the ClickHouse migration that adds message_local_weeks
_VOICE_WEEKS = 14  # the ClickHouse migration that adds voice_local_weeks
G = 9
CHANNEL = 10


def _z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (message_id, author, at, is_bot), in ClickHouse before the daily rollup existed (0003), so that
# the migrations' backfills build every rollup the previous release read, the daily one included.
_LOADED_EARLY = [
    (1, 600, "2024-03-10 18:10", False),  # a Sunday: the UTC week of Monday 2024-03-04
    (2, 600, "2024-03-11 09:00", False),  # the next week
    (3, 601, "2024-03-05 12:00", False),
    (4, 602, "2024-03-06 08:00", True),  # one author under both bot flags, one week
    (5, 602, "2024-03-07 20:00", False),
    (6, 603, "2024-03-12 10:00", False),  # 603's only message: deleted after the upgrade
    (7, 604, "2024-03-13 10:00", False),  # deleted already, so in no rollup
]

_WEEKS = (
    "SELECT week, author_id, messages, first_at, last_at FROM message_activity_weekly FINAL"
    " WHERE guild_id = {g:UInt64} ORDER BY week, author_id"
)
_WEEKS_BY_AUTHOR = (
    "SELECT author_id, weeks, first_at, last_at FROM message_activity_weeks_by_author FINAL"
    " WHERE guild_id = {g:UInt64} ORDER BY author_id"
)
_VOICE = (
    "SELECT user_id, weeks FROM voice_local_weeks FINAL WHERE guild_id = {g:UInt64}"
    " AND tz = 'UTC' ORDER BY user_id"
)
_LOCAL = (
    "SELECT author_id, weeks FROM message_local_weeks FINAL"
    " WHERE guild_id = {g:UInt64} AND tz = 'UTC' ORDER BY author_id"
)
_DAILY = (
    "SELECT day, author_id, messages, first_at, last_at FROM message_activity_daily FINAL"
    " WHERE guild_id = {g:UInt64} ORDER BY day, author_id"
)


async def _rows(ch: AsyncClient, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in (await ch.query(sql, parameters={"g": G})).result_rows]


async def _migrate_clickhouse_below_then_load(ch: AsyncClient) -> None:
    """ClickHouse as the release before 0012 left it, with _LOADED_EARLY in every rollup."""
    await clickhouse_history(ch)
    for migration in discover("clickhouse"):
        if migration.version >= _DAILY_RETIRED:
            break
        if migration.version == 3:
            await ch.insert(
                "messages",
                [[i, G, CHANNEL, a, _z(t), "text", bot, 1] for i, a, t, bot in _LOADED_EARLY],
                column_names=[
                    "message_id",
                    "guild_id",
                    "channel_id",
                    "author_id",
                    "created_at",
                    "kind",
                    "is_bot",
                    "version",
                ],
            )
            await ch.insert(
                "message_deletions",
                [[7, G, CHANNEL, _z("2024-03-14 00:00"), 1]],
                column_names=["message_id", "guild_id", "channel_id", "deleted_at", "version"],
            )
            await ch.command(
                "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id,"
                " channel_kind, joined_at, left_at, duration_seconds, muted_seconds,"
                " close_reason, is_bot, version) SELECT generateUUIDv4(), {g:UInt64}, 50, 602,"
                " 'voice', toDateTime64('2024-03-13 20:00:00', 3, 'UTC'),"
                " toDateTime64('2024-03-13 20:30:00', 3, 'UTC'), 1800, 0, 'leave', false, 1",
                parameters={"g": G},
            )
        await apply_clickhouse(ch, migration)


async def test_the_week_rollups_survive_retiring_the_daily_rollup(endpoints: Endpoints) -> None:
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        await _migrate_clickhouse_below_then_load(ch)
        weeks_before = await _rows(ch, _WEEKS)
        by_author_before = await _rows(ch, _WEEKS_BY_AUTHOR)
        assert weeks_before == await _rows(ch, RAW_WEEKS)
        assert [a for a, *_ in by_author_before] == [600, 601, 602, 603]

        report = await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
        assert report.applied["clickhouse"] == [_DAILY_RETIRED, _LOCAL_WEEKS, _VOICE_WEEKS]
        # 0014: the guild's voice weeks are not written yet, and its zone row says so.
        assert await recorded_zone(ch, G) is None
        assert await _rows(ch, _VOICE) == []
        # 0013's backfill: in UTC a local week is the UTC one. Run again, it changes nothing.
        assert await _rows(ch, _LOCAL) == [(a, w) for a, w, *_ in by_author_before]
        (local_weeks,) = [m for m in discover("clickhouse") if m.version == _LOCAL_WEEKS]
        for statement in local_weeks.statements():
            await ch.command(statement)
        assert await _rows(ch, _LOCAL) == [(a, w) for a, w, *_ in by_author_before]
        # Kept for the previous release's ETL (a rollback), marked stale, no longer written.
        comment = await ch.command(
            "SELECT comment FROM system.tables"
            " WHERE database = currentDatabase() AND name = 'message_activity_daily'"
        )
        assert "No longer maintained" in str(comment)
        daily_before = await _rows(ch, _DAILY)
        assert daily_before
        # Every bucket recomputed from the author days gives the weeks the daily rollup gave.
        buckets = await ch.query(
            "SELECT DISTINCT guild_id, toUnixTimestamp(toStartOfHour(created_at)) FROM messages"
        )
        await rollups.recompute(ch, [(int(g), int(h)) for g, h in buckets.result_rows])
        assert await _rows(ch, _WEEKS) == weeks_before
        assert await _rows(ch, _WEEKS_BY_AUTHOR) == by_author_before

        # The ETL still loads, and a deletion still empties a week to a zero row.
        pg = await asyncpg.connect(endpoints.postgres_dsn)
        try:
            await pg.execute(
                "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
                " created_at, kind, is_bot) VALUES (8, $1, $2, 601, $3, 'text', false)",
                G,
                CHANNEL,
                _z("2024-03-12 11:00"),
            )
            await pg.execute(
                "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
                " VALUES (6, $1, $2, $3)",
                G,
                CHANNEL,
                _z("2024-03-14 00:00"),
            )
        finally:
            await pg.close()
        result = await run_once(
            endpoints.postgres_dsn, endpoints.clickhouse_url, None, RunOptions(batch_rows=100)
        )
        assert result.outcome == "caught_up", result.error
        weeks = await _rows(ch, _WEEKS)
        assert [w for w in weeks if w[2] > 0] == await _rows(ch, RAW_WEEKS)
        assert [(a, w) for w, a, n, *_ in weeks if n == 0] == [(603, _z("2024-03-11").date())]
        assert await _rows(ch, _DAILY) == daily_before
        assert [(a, w) for a, w, *_ in await _rows(ch, _WEEKS_BY_AUTHOR)] == [
            (600, [_z("2024-03-04").date(), _z("2024-03-11").date()]),
            (601, [_z("2024-03-04").date(), _z("2024-03-11").date()]),
            (602, [_z("2024-03-04").date()]),
            (603, []),
        ]
        # The recompute rewrote the local weeks with them (the guild has no zone: UTC).
        assert await _rows(ch, _LOCAL) == [(a, w) for a, w, *_ in await _rows(ch, _WEEKS_BY_AUTHOR)]
        # The run wrote the voice weeks of the session loaded before 0014, then said so.
        assert await _rows(ch, _VOICE) == [(602, [_z("2024-03-11").date()])]
        assert await recorded_zone(ch, G) == "UTC"
        assert await _rows(ch, "SELECT loaded_batch FROM voice_sessions") == [(1,)]
    finally:
        await ch.close()
