"""Retention's cohorts and voice weeks from member_joins and voice_starts_by_member (ClickHouse
migration 0010), loaded by the real ETL, against the raw rows in zones at the widest and the odd
offsets, across a daylight saving switch, and after the ETL's rows arrive a second time.

Members of guild 7 (UTC times, 2024):
* 400 joins Wednesday 03-06 12:00, leaves and rejoins on 03-20 (the first join counts); voice
  sessions start Sunday 03-10 10:30 (Monday 00:30 in Kiritimati, +14:00) and Sunday 03-17
  18:15 (Monday 00:00 exactly in Kathmandu, +05:45).
* 401, a bot, joins 03-05 12:00 and starts a session on 03-06: counted only with bots.
* 402 joins 03-13 12:00; a session starts Monday 03-18 11:30 (still Sunday in -12:00).
* 403 first joined on 02-01, before the range, and rejoins on 03-07: in no cohort.
* 404 joins 03-05 12:00 and does nothing.
America/Los_Angeles switches to daylight saving time on Sunday 03-10.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta

import asyncpg
import pytest
from clickhouse_connect.driver.asyncclient import AsyncClient

from herwa import analytics
from herwa.analytics import Cohort
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.schema import discover
from herwa.stores import clickhouse_url_client
from tests.analytics._rollup_data import Z

G = 7
SPAN = (Z("2024-02-20 00:00"), Z("2024-04-01 00:00"))
WEEKS = 4
MEMBER_EVENTS = [  # (user, event, at, is_bot)
    (400, "join", "2024-03-06 12:00", False),
    (400, "leave", "2024-03-19 12:00", False),
    (400, "join", "2024-03-20 12:00", False),
    (401, "join", "2024-03-05 12:00", True),
    (402, "join", "2024-03-13 12:00", False),
    (403, "join", "2024-02-01 12:00", False),
    (403, "leave", "2024-02-02 12:00", False),
    (403, "join", "2024-03-07 12:00", False),
    (404, "join", "2024-03-05 12:00", False),
]
VOICE = [  # (user, joined_at, is_bot)
    (400, "2024-03-10 10:30", False),
    (400, "2024-03-17 18:15", False),
    (401, "2024-03-06 13:00", True),
    (402, "2024-03-18 11:30", False),
    (403, "2024-03-08 12:00", False),
]
ZONES = (
    "UTC",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "America/Los_Angeles",
    "Europe/Berlin",
)
EXPECTED = {
    "UTC": [
        Cohort(date(2024, 3, 4), 2, (0,) * WEEKS, (1, 1, 0, 0)),
        Cohort(date(2024, 3, 11), 1, (0,) * WEEKS, (0, 1, 0, 0)),
    ],
    "Pacific/Kiritimati": [
        Cohort(date(2024, 3, 4), 2, (0,) * WEEKS, (0, 1, 1, 0)),
        Cohort(date(2024, 3, 11), 1, (0,) * WEEKS, (0, 1, 0, 0)),
    ],
    "Asia/Kathmandu": [
        Cohort(date(2024, 3, 4), 2, (0,) * WEEKS, (1, 0, 1, 0)),
        Cohort(date(2024, 3, 11), 1, (0,) * WEEKS, (0, 1, 0, 0)),
    ],
    "Etc/GMT+12": [
        Cohort(date(2024, 3, 4), 2, (0,) * WEEKS, (1, 1, 0, 0)),
        Cohort(date(2024, 3, 11), 1, (0,) * WEEKS, (1, 0, 0, 0)),
    ],
}


@pytest.fixture
async def ro(migrated: Endpoints) -> AsyncIterator[AsyncClient]:
    pg = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await pg.executemany(
            "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at,"
            " is_bot) VALUES ($1, $2, $3, $4, $4, $5)",
            [(G, u, e, Z(at), bot) for u, e, at, bot in MEMBER_EVENTS],
        )
        await pg.executemany(
            "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
            " left_at, close_reason, is_bot) VALUES ($1, $2, 50, $3, $4, $5, 'leave', $6)",
            [
                (uuid.uuid4(), G, u, Z(at), Z(at) + timedelta(minutes=20), bot)
                for u, at, bot in VOICE
            ],
        )
        run = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
        assert run.outcome == "caught_up", run.error
    finally:
        await pg.close()
    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    yield client
    await client.close()


async def _both(ro: AsyncClient, tz: str, *, bots: bool = False) -> list[Cohort]:
    rollup = await analytics.retention(ro, G, tz, *SPAN, weeks=WEEKS, include_bots=bots)
    raw = await analytics.retention(ro, G, tz, *SPAN, weeks=WEEKS, include_bots=bots, source="raw")
    assert rollup == raw, tz
    return rollup


async def test_cohorts_and_voice_weeks_match_the_raw_rows_in_every_zone(
    ro: AsyncClient, migrated: Endpoints
) -> None:
    for tz in ZONES:
        got = await _both(ro, tz)
        if tz in EXPECTED:
            assert got == EXPECTED[tz], tz
    # The bot joins the first cohort, and its session counts in week 0.
    assert await _both(ro, "UTC", bots=True) == [
        Cohort(date(2024, 3, 4), 3, (0,) * WEEKS, (2, 1, 0, 0)),
        Cohort(date(2024, 3, 11), 1, (0,) * WEEKS, (0, 1, 0, 0)),
    ]

    # The same rows arrive again (a batch loaded twice, a session re-inserted with a newer
    # version when it closed): the views add rows, the answers stay.
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        for table in ("member_events", "voice_sessions"):
            await ch.command(
                f"INSERT INTO {table} SELECT * REPLACE (version + 1 AS version) FROM {table}"  # noqa: S608
                " WHERE guild_id = {g:UInt64}",
                parameters={"g": G},
            )
    finally:
        await ch.close()
    for tz in ZONES:
        got = await _both(ro, tz)
        if tz in EXPECTED:
            assert got == EXPECTED[tz], tz


async def test_the_migration_backfills_what_is_loaded_and_can_be_run_again(
    ro: AsyncClient, migrated: Endpoints
) -> None:
    """An upgrade from version 9: the rows are loaded before the tables exist; 0010 is cut off
    after its views (nothing backfilled yet), then run again from the start, as `herwa
    migrate` does after an interruption."""
    (migration,) = [m for m in discover("clickhouse") if m.version == 10]
    statements = migration.statements()
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        for name in ("member_joins_mv", "voice_starts_by_member_mv"):
            await ch.command(f"DROP VIEW {name}")
        for name in ("member_joins", "voice_starts_by_member"):
            await ch.command(f"DROP TABLE {name}")
        interrupted = [s for s in statements if not s.startswith("INSERT")]
        assert len(interrupted) == len(statements) - 2
        for statement in interrupted:
            await ch.command(statement)
        assert await analytics.retention(ro, G, "UTC", *SPAN, weeks=WEEKS) == []
        for statement in statements:
            await ch.command(statement)
    finally:
        await ch.close()
    for tz in ZONES:
        got = await _both(ro, tz)
        if tz in EXPECTED:
            assert got == EXPECTED[tz], tz
