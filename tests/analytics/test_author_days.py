"""The per-(author, UTC day, bot flag) rollup /overview reads, maintained by the real ETL.

Humans and a bot write on two UTC days around a Kolkata midnight (18:30 UTC); a later run
loads deletions, one of which empties an author's only day there. The rollup must equal the
same figures computed from the raw messages, the weekly rollup derived from it (summed over the
bot flag) must too, and /overview's active members must equal the raw count for ranges that cut
a UTC day at its start, at its end, and inside it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from herwa import analytics
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client
from tests.analytics._rollup_data import CHANNEL, Z
from tests.support.rollups import RAW_WEEKS

G = 7
BOT = 499

# (message_id, author, at); the bot's messages are flagged as such.
MESSAGES = [
    (1, 400, "2024-03-10 09:00"),
    (2, 400, "2024-03-10 18:10"),  # Sun 23:40 in Kolkata
    (3, 401, "2024-03-10 18:45"),  # Mon 00:15 in Kolkata
    (4, 401, "2024-03-11 02:00"),
    (5, 402, "2024-03-11 20:00"),
    (6, 403, "2024-03-10 12:00"),  # deleted by the second run: 403's only day goes
    (7, 400, "2024-03-11 23:59"),  # deleted by the second run
    (8, BOT, "2024-03-10 19:00"),
    (9, BOT, "2024-03-11 01:00"),
]
DELETED = (6, 7)

_RAW_DAYS = """
    SELECT guild_id, toDate(created_at) AS day, is_bot, author_id, toUInt32(count()),
           toDateTime(min(created_at), 'UTC'), toDateTime(max(created_at), 'UTC')
    FROM messages FINAL
    WHERE guild_id = {g:UInt64} AND message_id NOT IN (
        SELECT message_id FROM message_deletions WHERE guild_id = {g:UInt64})
    GROUP BY guild_id, day, is_bot, author_id
    ORDER BY day, is_bot, author_id
"""
_RAW_ACTIVE = """
    SELECT uniqExact(author_id) FROM messages FINAL
    WHERE guild_id = {g:UInt64} AND created_at >= toDateTime({since:UInt32}, 'UTC')
      AND created_at < toDateTime({until:UInt32}, 'UTC') AND NOT is_bot
      AND message_id NOT IN (SELECT message_id FROM message_deletions WHERE guild_id = {g:UInt64})
"""


async def _load(endpoints: Endpoints) -> None:
    pg = await asyncpg.connect(endpoints.postgres_dsn)
    options = RunOptions(batch_rows=1000)
    try:
        await pg.executemany(
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
            " created_at, kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', $6)",
            [(i, G, CHANNEL, a, Z(t), a == BOT) for i, a, t in MESSAGES],
        )
        first = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, options)
        assert first.outcome == "caught_up", first.error
        await pg.executemany(
            "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
            " VALUES ($1, $2, $3, $4)",
            [(i, G, CHANNEL, Z("2024-03-12 00:00")) for i in DELETED],
        )
        second = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, options)
        assert second.outcome == "caught_up", second.error
    finally:
        await pg.close()


async def test_author_days_equal_the_raw_messages_and_answer_overview(
    migrated: Endpoints,
) -> None:
    await _load(migrated)
    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:

        async def fetch(sql: str, **params: object) -> list[tuple[object, ...]]:
            result = await client.query(sql, parameters={"g": G, **params})
            return [tuple(r) for r in result.result_rows]

        raw = await fetch(_RAW_DAYS)
        assert len(raw) == 6
        assert (
            await fetch(
                "SELECT guild_id, day, is_bot, author_id, messages, first_at, last_at"
                " FROM message_activity_author_days FINAL"
                " WHERE guild_id = {g:UInt64} AND messages > 0 ORDER BY day, is_bot, author_id"
            )
            == raw
        )
        # The emptied keys are zero rows, not stale counts.
        assert await fetch(
            "SELECT author_id, day FROM message_activity_author_days FINAL"
            " WHERE guild_id = {g:UInt64} AND messages = 0 ORDER BY author_id"
        ) == [(400, datetime(2024, 3, 11).date()), (403, datetime(2024, 3, 10).date())]
        # The weekly rollup, derived from it over both bot flags, is the raw per-author week,
        # and the weeks the deletions emptied (403's, and 400's second) are zero rows.
        assert await fetch(
            "SELECT week, author_id, messages, first_at, last_at FROM message_activity_weekly"
            " FINAL WHERE guild_id = {g:UInt64} AND messages > 0 ORDER BY week, author_id"
        ) == await fetch(RAW_WEEKS)
        assert await fetch(
            "SELECT author_id, week FROM message_activity_weekly FINAL"
            " WHERE guild_id = {g:UInt64} AND messages = 0 ORDER BY author_id"
        ) == [(400, datetime(2024, 3, 11).date()), (403, datetime(2024, 3, 4).date())]

        kolkata_midnight = Z("2024-03-10 18:30")
        for since, until in (
            (Z("2024-03-10 00:00"), Z("2024-03-12 00:00")),  # whole UTC days
            (kolkata_midnight, kolkata_midnight + timedelta(days=1)),  # cuts both days
            (kolkata_midnight - timedelta(days=1), kolkata_midnight),  # ends inside a day
            (Z("2024-03-11 01:00"), Z("2024-03-11 19:00")),  # inside one UTC day
            (Z("2024-03-10 10:00"), Z("2024-03-10 18:00")),  # inside one day, nobody
        ):
            overview = await analytics.overview(client, G, since, until)
            ((expected,),) = await fetch(
                _RAW_ACTIVE, since=int(since.timestamp()), until=int(until.timestamp())
            )
            assert overview.active_members == expected, (since, until)
        both_days = await analytics.overview(
            client, G, kolkata_midnight, kolkata_midnight + timedelta(days=1)
        )
        # Only 401's two messages: 400's 18:10 is before the range, 402's 20:00 after it.
        assert (both_days.messages, both_days.active_members) == (2, 1)
        with_bots = await analytics.overview(
            client, G, kolkata_midnight, kolkata_midnight + timedelta(days=1), include_bots=True
        )
        assert (with_bots.messages, with_bots.active_members) == (4, 2)
    finally:
        await client.close()
