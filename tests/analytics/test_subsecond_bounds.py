"""Rows in the last sub-second before a time bound are counted, by the rollups and by the
queries the commands run.

The raw tables' times are DateTime64(3) and partitioned by them. ClickHouse 26.9's partition
minmax index skips a part whose rows all lie in the last second before a strict DateTime bound:
``created_at < toDateTime(11:00)`` did not find a message of 10:59:59.5 when it was alone in its
part, so the rollup recompute dropped it and /overview, /growth and the raw heatmap missed such
rows. Every row here is loaded by its own ETL run, alone in its part, as a quiet server's
message is.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest

from herwa import analytics
from herwa.bot.commands import date_range
from herwa.bot.commands.export import daily_rows
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client

G = 7
HOUR = datetime(2024, 3, 4, 10, tzinfo=UTC)  # a Monday
LAST_OF_HOUR = HOUR + timedelta(minutes=59, seconds=59, milliseconds=500)
LAST_OF_DAY = datetime(2024, 3, 4, 23, 59, 59, 999_000, tzinfo=UTC)
OPTIONS = RunOptions(batch_rows=1000)


async def _run(endpoints: Endpoints) -> None:
    result = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error


async def _message(pg: asyncpg.Connection, message_id: int, at: datetime) -> None:
    await pg.execute(
        "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
        " kind, is_bot) VALUES ($1, $2, 10, 100, $3, 'text', false)",
        message_id,
        G,
        at,
    )


async def ch_value(endpoints: Endpoints, sql: str, **params: object) -> Any:
    client = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        return (await client.query(sql, parameters=params)).result_rows[0][0]
    finally:
        await client.close()


# The hour, the quarter hour and the day the last subsecond belongs to.
_ROLLUPS = ("message_activity_hourly", "message_activity_15m", "message_activity_author_days")


async def _rollup_totals(endpoints: Endpoints) -> dict[str, int]:
    out = {}
    for rollup in _ROLLUPS:
        sql = f"SELECT sum(messages) FROM {rollup} FINAL WHERE guild_id = {G}"  # noqa: S608
        out[rollup] = int(await ch_value(endpoints, sql))
    return out


async def test_a_message_in_the_last_subsecond_of_an_hour_and_a_day_is_rolled_up(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await _message(pg, 1, LAST_OF_HOUR)
    await _run(migrated)
    assert await _rollup_totals(migrated) == dict.fromkeys(_ROLLUPS, 1)
    await _message(pg, 2, LAST_OF_DAY)
    await _run(migrated)
    assert await _rollup_totals(migrated) == dict.fromkeys(_ROLLUPS, 2)
    hourly = await ch_value(
        migrated,
        "SELECT groupArray(toHour(hour)) FROM (SELECT hour FROM message_activity_hourly FINAL"
        " WHERE guild_id = {g:UInt64} AND messages > 0 ORDER BY hour)",
        g=G,
    )
    assert hourly == [10, 23]


async def test_queries_count_rows_in_the_last_subsecond_before_until(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    """A message, a join and a voice session, each alone in its part, in a day's last ms."""
    await _message(pg, 1, LAST_OF_DAY)
    await _run(migrated)
    await pg.execute(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " VALUES ($1, 100, 'join', $2, $2)",
        G,
        LAST_OF_DAY,
    )
    await _run(migrated)
    await pg.execute(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), $1, 50, 100, $2, $3, 'leave')",
        G,
        LAST_OF_DAY,
        LAST_OF_DAY + timedelta(minutes=2),
    )
    await _run(migrated)

    ro = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:
        day = LAST_OF_DAY.date()
        since = datetime.combine(day, time(), UTC)
        until = since + timedelta(days=1)
        view = await analytics.overview(ro, G, since, until)
        assert (view.messages, view.joins, view.voice_members) == (1, 1, 1), view
        assert view.voice_seconds == pytest.approx(0.001, abs=1e-6)  # the part before until
        growth = await analytics.growth(ro, G, "UTC", since, until)
        assert [(p.joins, p.leaves) for p in growth] == [(1, 0)]
        raw = await analytics.heatmap(ro, G, "UTC", since, until, source="raw")
        assert raw.total == 1
        summary = await analytics.member_summary(ro, G, 100, since, until)
        assert (summary.messages, summary.voice_sessions) == (1, 1), summary
        # /export's days: the session's first millisecond lies in the day, the rest after it.
        span = date_range(
            days=1,
            end=day.isoformat(),
            tz="UTC",
            now=until,
            history_days=None,
            max_days=7,
            tier="enterprise",
        )
        (d,) = await analytics.daily(ro, G, "UTC", since, until)
        assert (d.messages, d.active_members, d.voice_members) == (1, 1, 1), d
        assert d.voice_seconds == pytest.approx(0.001, abs=1e-6)
        rows = await daily_rows(ro, G, span)
        assert rows == [[day.isoformat(), 1, 1, 0, 1, 0, ""]]
    finally:
        await ro.close()
