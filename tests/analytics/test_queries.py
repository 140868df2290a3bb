"""Analytics queries return exact numbers on a constructed data set, loaded by the real ETL.

Time zone edge cases: Asia/Kolkata (+05:30, two messages in one UTC hour fall on different
local days), America/New_York across the 2024-03-10 DST switch, and a join on Sunday 23:30 UTC
that is Monday in Kolkata (so it changes cohort week).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from herwa import analytics
from herwa.analytics import Cohort, Entry, GrowthPoint, dashboard
from herwa.bot.snapshots import UPSERT as SNAPSHOT_UPSERT
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client
from tests.chart.test_dashboards import expand

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


def Z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


G = 1
# (message_id, author, channel, at, is_bot)
MESSAGES = [
    (1, 100, 10, "2024-03-04 18:15", False),
    (2, 100, 10, "2024-03-04 18:45", False),
    (3, 101, 11, "2024-03-10 06:30", False),  # 01:30 EST
    (4, 101, 11, "2024-03-10 07:30", False),  # 03:30 EDT
    (5, 102, 10, "2024-03-10 07:40", True),
    (6, 100, 11, "2024-03-12 12:00", False),  # deleted below
    (7, 100, 11, "2024-03-12 12:05", False),
    (8, 103, 10, "2024-03-18 10:00", False),
    (9, 104, 10, "2024-03-04 12:00", False),
]
# (user, event, at, is_bot)
MEMBERS = [
    (104, "join", "2024-03-03 23:30", False),
    (100, "join", "2024-03-04 10:00", False),
    (102, "join", "2024-03-04 11:00", True),
    (101, "join", "2024-03-05 08:00", False),
    (101, "leave", "2024-03-05 22:00", False),
    (103, "join", "2024-03-11 09:00", False),
]
# (user, joined, left)
VOICE = [
    (100, "2024-03-04 19:00", "2024-03-04 19:30"),
    (101, "2024-03-12 20:00", "2024-03-12 21:00"),
]


@pytest.fixture
async def ro(migrated: Endpoints) -> AsyncIterator[AsyncClient]:
    pg = await asyncpg.connect(migrated.postgres_dsn)
    try:
        for guild in (G, 2):  # guild 2 mirrors guild 1 and must never leak into its figures
            await pg.executemany(
                "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
                " created_at, kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', $6)",
                [(i + 1000 * (guild - 1), guild, c, a, Z(t), b) for i, a, c, t, b in MESSAGES],
            )
            await pg.executemany(
                "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at,"
                " is_bot) VALUES ($1, $2, $3, $4, $4, $5)",
                [(guild, u, e, Z(t), b) for u, e, t, b in MEMBERS],
            )
            await pg.executemany(
                "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id,"
                " joined_at, left_at, close_reason) VALUES (gen_random_uuid(), $1, 50, $2, $3,"
                " $4, 'leave')",
                [(guild, u, Z(j), Z(lv)) for u, j, lv in VOICE],
            )
        await pg.execute(
            "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
            " VALUES (6, 1, 11, $1)",
            Z("2024-03-13 00:00"),
        )
        await pg.execute(
            "INSERT INTO member_count_snapshots (guild_id, day, member_count,"
            " taken_at) VALUES (1, '2024-03-04', 40, $1)",
            Z("2024-03-04 00:00"),
        )
        options = RunOptions(batch_rows=1000)
        await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
        # The daily snapshot is re-taken: the upsert re-queues it and the newer count wins.
        await pg.execute(SNAPSHOT_UPSERT, 1, date(2024, 3, 4), 42, Z("2024-03-04 06:00"))
        await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    finally:
        await pg.close()
    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    yield client
    await client.close()


def _cells(hm: analytics.Heatmap) -> dict[tuple[str, int], int]:
    return {
        (analytics.DAYS[d], h): n for d, row in enumerate(hm.cells) for h, n in enumerate(row) if n
    }


MARCH = (Z("2024-03-01 00:00"), Z("2024-04-01 00:00"))

HEATMAPS = {
    "UTC": {
        ("Mon", 18): 2,
        ("Mon", 12): 1,
        ("Sun", 6): 1,
        ("Sun", 7): 1,
        ("Tue", 12): 1,
        ("Mon", 10): 1,
    },
    "Asia/Kolkata": {
        ("Mon", 23): 1,
        ("Tue", 0): 1,
        ("Mon", 17): 1,
        ("Sun", 12): 1,
        ("Sun", 13): 1,
        ("Tue", 17): 1,
        ("Mon", 15): 1,
    },
    "America/New_York": {
        ("Mon", 13): 2,
        ("Mon", 7): 1,
        ("Sun", 1): 1,
        ("Sun", 3): 1,
        ("Tue", 8): 1,
        ("Mon", 6): 1,
    },
}


ZONES = [*sorted(HEATMAPS), "Asia/Tehran"]  # Tehran, +03:30: a voice session across midnight


async def test_the_heatmap_rollup_is_written_merged(ro: AsyncClient) -> None:
    """Parts of insert level would make every heatmap merge its whole range under FINAL."""
    parts = await ro.query(
        "SELECT level FROM system.parts WHERE active AND database = currentDatabase()"
        " AND table = 'message_activity_15m'"
    )
    assert parts.result_rows, "the ETL wrote no heatmap rollup"
    assert min(level for (level,) in parts.result_rows) >= 1, parts.result_rows


@pytest.mark.parametrize("tz", sorted(HEATMAPS))
async def test_heatmap_cells_in_the_guilds_time_zone(ro: AsyncClient, tz: str) -> None:
    for source in ("rollup", "raw"):
        hm = await analytics.heatmap(ro, G, tz, *MARCH, source=source)
        assert _cells(hm) == HEATMAPS[tz], source
        assert hm.total == 7
    with_bots = await analytics.heatmap(ro, G, "UTC", *MARCH, include_bots=True)
    assert _cells(with_bots)[("Sun", 7)] == 2


async def test_retention_matrix_utc_and_kolkata(ro: AsyncClient) -> None:
    span = (Z("2024-02-26 00:00"), Z("2024-03-25 00:00"))
    utc = await analytics.retention(ro, G, "UTC", *span, weeks=4)
    assert utc == [
        Cohort(date(2024, 2, 26), 1, (0, 1, 0, 0), (0, 0, 0, 0)),
        Cohort(date(2024, 3, 4), 2, (2, 1, 0, 0), (1, 1, 0, 0)),
        Cohort(date(2024, 3, 11), 1, (0, 1, 0, 0), (0, 0, 0, 0)),
    ]
    for source in ("rollup", "raw"):
        kolkata = await analytics.retention(
            ro,
            G,
            "Asia/Kolkata",
            *span,
            weeks=4,
            source=source,
        )
        assert kolkata == [
            Cohort(date(2024, 3, 4), 3, (3, 1, 0, 0), (1, 1, 0, 0)),
            Cohort(date(2024, 3, 11), 1, (0, 1, 0, 0), (0, 0, 0, 0)),
        ], source


@pytest.mark.parametrize("tz", sorted(HEATMAPS))
async def test_grafana_panels_show_what_the_commands_show(ro: AsyncClient, tz: str) -> None:
    # The panels' SQL as Grafana runs it: variables and time range expanded by the plugin.
    def panel(title: str) -> str:
        return expand(dashboard.PANELS[title], {"guild": str(G), "tz": tz}, *MARCH)

    rows = (
        await ro.query(panel("Activity heatmap (weekday \u00d7 hour, server time)"))
    ).result_rows
    grid = [[0] * 24 for _ in range(7)]
    for weekday, hour, messages in rows:
        grid[weekday - 1][hour] = messages
    hm = await analytics.heatmap(ro, G, tz, *MARCH)
    assert tuple(tuple(day) for day in grid) == hm.cells
    assert _cells(hm) == HEATMAPS[tz]

    rows = (await ro.query(panel("Retention by weekly join cohort"))).result_rows
    weeks = dashboard.RETENTION_WEEKS
    cohorts: dict[str, tuple[int, list[int], list[int]]] = {}
    for cohort, joined, n, active, _, voice, _ in rows:
        entry = cohorts.setdefault(cohort, (joined, [0] * weeks, [0] * weeks))
        entry[1][n], entry[2][n] = active, voice
    shown = [
        Cohort(date.fromisoformat(c), joined, tuple(active), tuple(voice))
        for c, (joined, active, voice) in sorted(cohorts.items())
    ]
    expected = await analytics.retention(ro, G, tz, *MARCH, weeks=weeks)
    assert shown == expected
    assert any(any(c.voice_active) for c in expected)  # voice is compared, not only zeros

    rows = (await ro.query(panel("Member growth"))).result_rows
    days = {at.date(): (joins, leaves, net) for at, joins, leaves, net in rows}
    points = await analytics.growth(ro, G, tz, *MARCH)
    assert days == {
        p.day: (p.joins, p.leaves, p.joins - p.leaves) for p in points if p.joins or p.leaves
    }
    assert days
    counts = {at.date(): n for at, n in (await ro.query(panel("Member count"))).result_rows}
    assert counts == {p.day: p.member_count for p in points if p.member_count is not None}
    assert counts == {date(2024, 3, 4): 42}

    rows = (await ro.query(panel("Top channels"))).result_rows
    channels = await analytics.channel_stats(ro, G, *MARCH)  # what the owner's /channels says
    assert rows == [(str(c.channel_id), c.messages, c.authors) for c in channels]

    series = await analytics.daily(ro, G, tz, *MARCH)
    rows = (await ro.query(panel("Active members per day"))).result_rows
    assert {at.date(): n for at, n in rows} == {
        d.day: d.active_members for d in series if d.active_members
    }
    rows = (await ro.query(panel("Voice minutes per day"))).result_rows
    assert {at.date(): (minutes, n) for at, minutes, n in rows} == {
        d.day: (round(d.voice_seconds / 60, 1), d.voice_members) for d in series if d.voice_members
    }
    assert rows


def _hand_written(title: str) -> str:
    (target,) = next(
        p["targets"]
        for p in json.loads(dashboard.ANALYTICS.read_text())["panels"]
        if p["title"] == title
    )
    sql: str = target["rawSql"]
    return sql


@pytest.mark.parametrize("tz", ZONES)
async def test_hand_written_panels_add_up_to_what_the_commands_show(
    ro: AsyncClient, tz: str
) -> None:
    """The panels no command has a counterpart of: Grafana's interval series and the day x
    hour grid. For the same server, range and time zone their buckets add up to the heatmap's
    cells and to each day's messages (/export), in every zone."""
    assert {"Messages over time", "Activity by hour of day"} < set(dashboard.HAND_WRITTEN)
    variables = {"guild": str(G), "tz": tz}
    hm = await analytics.heatmap(ro, G, tz, *MARCH)
    series = await analytics.daily(ro, G, tz, *MARCH)

    grid_sql = expand(_hand_written("Activity by hour of day"), variables, *MARCH)
    grid = [[0] * 24 for _ in range(7)]
    per_day: dict[date, int] = {}
    for day_start, hour, messages in (await ro.query(grid_sql)).result_rows:
        grid[day_start.isoweekday() - 1][hour] += messages
        per_day[day_start.date()] = per_day.get(day_start.date(), 0) + messages
    assert tuple(tuple(day) for day in grid) == hm.cells
    assert per_day == {d.day: d.messages for d in series if d.messages}

    for interval in (900, 3600, 86400):
        sql = expand(_hand_written("Messages over time"), variables, *MARCH, interval_s=interval)
        rows = (await ro.query(sql)).result_rows
        assert sum(n for _, n in rows) == hm.total == sum(d.messages for d in series) == 7
    if tz == "UTC":  # UTC days are the interval's days
        assert {at.date(): n for at, n in rows} == {d.day: d.messages for d in series if d.messages}


def _local_days(tz: str, first: date, last: date) -> list[tuple[date, datetime, datetime]]:
    zone = ZoneInfo(tz)
    out = []
    day = first
    while day <= last:
        start = datetime.combine(day, time(), zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
        out.append((day, start, end))
        day += timedelta(days=1)
    return out


@pytest.mark.parametrize("tz", ZONES)
async def test_each_day_is_what_the_commands_say_of_that_day(ro: AsyncClient, tz: str) -> None:
    """/export's (and the daily panels') figure of a day is /overview's and the heatmap's for
    that one day: messages as the heatmap counts them, active members and voice time as
    /overview counts them, a voice session across midnight split between its days."""
    days = _local_days(tz, date(2024, 3, 3), date(2024, 3, 19))
    series = await analytics.daily(ro, G, tz, days[0][1], days[-1][2])
    assert [d.day for d in series] == [day for day, _, _ in days]
    for shown, (day, start, end) in zip(series, days, strict=True):
        ov = await analytics.overview(ro, G, start, end)
        hm = await analytics.heatmap(ro, G, tz, start, end)
        assert (shown.messages, shown.active_members) == (hm.total, ov.active_members), day
        assert (shown.voice_seconds, shown.voice_members) == (ov.voice_seconds, ov.voice_members)
    assert sum(d.messages for d in series) == 7
    assert sum(d.voice_seconds for d in series) == 5400.0
    if tz == "Asia/Tehran":  # 101's hour 20:00-21:00 UTC is 23:30-00:30 there
        split = {d.day.day: d.voice_seconds for d in series if d.voice_seconds}
        assert split == {4: 1800.0, 12: 1800.0, 13: 1800.0}
    clipped = await analytics.daily(ro, G, tz, Z("2024-03-12 20:30"), Z("2024-03-12 20:45"))
    assert sum(d.voice_seconds for d in clipped) == 900.0


async def test_growth_series_with_snapshots(ro: AsyncClient) -> None:
    span = (Z("2024-03-03 00:00"), Z("2024-03-06 00:00"))
    assert await analytics.growth(ro, G, "UTC", *span) == [
        GrowthPoint(date(2024, 3, 3), 1, 0, 1, None),
        GrowthPoint(date(2024, 3, 4), 1, 0, 2, 42),
        GrowthPoint(date(2024, 3, 5), 1, 1, 2, None),
    ]
    kolkata = await analytics.growth(ro, G, "Asia/Kolkata", *span)
    assert [(p.day.day, p.joins, p.leaves, p.net) for p in kolkata] == [
        (3, 0, 0, 0),
        (4, 2, 0, 2),
        (5, 1, 0, 3),
        (6, 0, 1, 2),
    ]


async def test_leaderboards_and_channel_stats(ro: AsyncClient) -> None:
    assert await analytics.leaderboard(ro, G, *MARCH) == [
        Entry(100, 3),
        Entry(101, 2),
        Entry(103, 1),
        Entry(104, 1),
    ]
    with_bots = await analytics.leaderboard(ro, G, *MARCH, include_bots=True, limit=3)
    assert with_bots == [Entry(100, 3), Entry(101, 2), Entry(102, 1)]
    assert await analytics.leaderboard(ro, G, *MARCH, kind="voice") == [
        Entry(101, 3600.0),
        Entry(100, 1800.0),
    ]
    clipped = await analytics.leaderboard(ro, G, Z("2024-03-12 20:30"), MARCH[1], kind="voice")
    assert clipped == [Entry(101, 1800.0)]
    channels = await analytics.channel_stats(ro, G, *MARCH)
    assert [(c.channel_id, c.messages, c.authors) for c in channels] == [(10, 4, 3), (11, 3, 2)]


async def test_member_summary_and_overview(ro: AsyncClient) -> None:
    summary = await analytics.member_summary(ro, G, 100, *MARCH)
    assert summary == analytics.MemberSummary(100, 3, 2, 2, 1800.0, 1, Z("2024-03-04 10:00"))
    nobody = await analytics.member_summary(ro, G, 999, *MARCH)
    assert (nobody.messages, nobody.voice_seconds, nobody.first_joined) == (0, 0.0, None)
    assert await analytics.overview(ro, G, *MARCH) == analytics.Overview(
        messages=7, active_members=4, voice_seconds=5400.0, voice_members=2, joins=4, leaves=1
    )


async def test_queries_run_as_the_readonly_user(ro: AsyncClient, migrated: Endpoints) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    with pytest.raises(DatabaseError, match=r"(?i)readonly"):
        await ro.command("INSERT INTO messages (message_id) VALUES (1)")


async def test_weeks_not_begun_are_blank_not_zero(migrated: Endpoints) -> None:
    """A cohort's week N that lies ahead has no value (None in the command, NULL in the
    panel), while a week that has begun with nobody active is 0."""
    now = datetime.now(UTC)
    monday = datetime.combine(now.date() - timedelta(days=now.weekday()), time(), UTC)
    cohort = monday - timedelta(weeks=1)  # last week: weeks 0 and 1 have begun, 2.. lie ahead
    pg = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await pg.executemany(
            "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at,"
            " is_bot) VALUES (3, $1, 'join', $2, $2, false)",
            [(300, cohort + timedelta(hours=1)), (301, cohort + timedelta(hours=2))],
        )
        await pg.execute(
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
            " created_at, kind, is_bot) VALUES (1, 3, 10, 300, $1, 'text', false)",
            cohort + timedelta(hours=3),
        )
        await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    finally:
        await pg.close()
    span = (cohort - timedelta(days=1), now)
    weeks = dashboard.RETENTION_WEEKS
    blank = (None,) * (weeks - 2)
    ro = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:
        for source in ("rollup", "raw"):
            got = await analytics.retention(ro, 3, "UTC", *span, weeks=weeks, source=source)
            assert got == [
                Cohort(cohort.date(), 2, (1, 0, *blank), (0, 0, *blank)),
            ], source
        sql = expand(
            dashboard.PANELS["Retention by weekly join cohort"], {"guild": "3", "tz": "UTC"}, *span
        )
        rows = (await ro.query(sql)).result_rows
    finally:
        await ro.close()
    assert [(n, active, pct) for _, _, n, active, pct, _, _ in rows] == [
        (0, 1, 50.0),
        (1, 0, 0.0),
        *((n, None, None) for n in range(2, weeks)),
    ]
