"""Retention cohorts: members by the local week they first joined → active in week N.

A cohort member is "active" in week N when they sent at least one (not deleted) message in the
N-th local week after their join week, "voice-active" when a voice session of theirs started in
it. Weeks start on Monday in the guild's time zone.

Message activity comes from the per-author week arrays (message_activity_weeks_by_author:
per UTC week with a live message, its first and last one), exact in every time zone (+05:30
and +05:45 included, no raw fallback needed): a UTC week touches at most two local weeks, so the
local weeks an author was active in that week are exactly those of its first and last live
message (migration 0005 explains why). ``source="raw"`` reads the messages themselves.

The query handles one row per member: the cohort is joined to each member's week arrays and
the local weeks their voice sessions started in (both small per member). The message times are
cut to those that can fall in the member's first ``weeks`` local weeks and only those converted;
each member then has the distinct numbers N of the weeks they were active in, which ``sumMap``
counts per cohort (no per-week vector per member, no lambda inside a lambda: ClickHouse
evaluates a lambda's captured expressions again for every element). The cohort is read once,
and cohort sizes, message and voice matrices come back from one statement, in one round trip.

Member joins and voice sessions are read without FINAL, unlike elsewhere: what is taken from
them (a member's earliest join, the distinct members per cohort and week) is the same with a
row loaded twice, as every version of such a row has the same member, time and bot flag, and
deletions are masked either way. FINAL there cost more than the rest of the query.
"""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Literal

from herwa.analytics._query import NOT_DELETED, SINCE, UNTIL, check_tz, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class Cohort:
    week: date  # local Monday
    joined: int
    # [N] members active in week N (0 = the join week); None while week N lies in the future.
    active: tuple[int | None, ...]
    voice_active: tuple[int | None, ...]


_COHORT = f"""
    SELECT user_id, toStartOfWeek(toTimeZone(min(at), {{tz:String}}), 1) AS week
    FROM member_events
    WHERE guild_id = {{guild_id:UInt64}} AND event = 'join' AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY user_id
    HAVING min(at) >= {SINCE} AND min(at) < {UNTIL}
"""

# Per member, what their activity is read from (joined on user_id).
_MESSAGES = {
    "rollup": """
        SELECT author_id AS user_id, weeks, first_at, last_at
        FROM message_activity_weeks_by_author FINAL WHERE guild_id = {guild_id:UInt64}
    """,
    "raw": f"""
        SELECT author_id AS user_id, groupArray(created_at) AS times
        FROM messages FINAL WHERE guild_id = {{guild_id:UInt64}} AND {NOT_DELETED}
        GROUP BY user_id
    """,
}
# A member's voice sessions, as the distinct local weeks they started in. Only sessions that
# can fall in a cohort's first weeks are read: a cohort's local Monday lies at most 7 days and
# 14 hours before its first join, its last week ends at most 7 * weeks days and 12 hours after
# the last one.
_VOICE = f"""
    SELECT user_id, groupUniqArray(toStartOfWeek(toTimeZone(joined_at, {{tz:String}}), 1)) AS weeks
    FROM voice_sessions
    WHERE guild_id = {{guild_id:UInt64}} AND joined_at >= {SINCE} - INTERVAL 8 DAY
      AND joined_at < {UNTIL} + toIntervalDay(7 * {{weeks:UInt16}} + 8)
    GROUP BY user_id
"""

# A cohort's local weeks 0 .. weeks-1 start at its local Monday 00:00, which is between Sunday
# 10:00 and Monday 12:00 UTC: these bounds hold them with room to spare. For the rollup, the UTC
# weeks that can touch them: a UTC week touches only the local weeks starting up to a week
# before or after its Monday.
_IN_WINDOW = (
    "t >= toDateTime(m.week - 1, 'UTC') AND t < toDateTime(m.week + 7 * {weeks:UInt16} + 1, 'UTC')"
)
_WEEK_IN_WINDOW = "w >= m.week - 7 AND w < m.week + 7 * ({weeks:UInt16} + 1)"
# The times (UTC) of a member's activity that can fall in their first weeks.
_TIMES = {
    "rollup": f"""
        arrayConcat(arrayFilter((t, w) -> {_WEEK_IN_WINDOW}, a.first_at, a.weeks),
                     arrayFilter((t, w) -> {_WEEK_IN_WINDOW}, a.last_at, a.weeks))
    """,
    "raw": f"arrayFilter(t -> {_IN_WINDOW}, a.times)",
}


def _local_weeks(times: str) -> str:
    """The distinct local Mondays of ``times``."""
    return f"arrayDistinct(arrayMap(t -> toStartOfWeek(toTimeZone(t, {{tz:String}}), 1), {times}))"


def _week_numbers(weeks: str) -> str:
    """Which of the member's weeks 0 .. weeks-1 the local Mondays ``weeks`` (distinct) are."""
    return f"""
        arrayFilter(n -> n < {{weeks:UInt16}},
                    arrayMap(w -> toUInt16(intDiv(w - m.week, 7)),
                             arrayFilter(w -> w >= m.week, {weeks})))
    """


# Week N of a cohort that has not begun yet (local time) has no members to count: NULL, which
# the chart and the Grafana panel leave blank, where 0 would read as "everyone left".
_BEGUN = "cohort + 7 * n <= toDate(now(), {tz:String})"


def _per_week(numbers: str) -> str:
    """Per cohort: week number -> members active in it, as sumMap's (keys, counts)."""
    return f"sumMap({numbers}, arrayWithConstant(length({numbers}), toUInt64(1)))"


def cohort_sql(source: Literal["rollup", "raw"] = "rollup") -> str:
    """One row per cohort and week N: (cohort, joined, n, active, voice_active), the last
    two NULL for a week N that has not begun.

    Parameters: guild_id, tz, since, until (epoch seconds), weeks, bots. The Grafana retention
    panel runs this same statement (herwa.analytics.dashboard).
    """
    return f"""
        SELECT cohort, joined, n, if({_BEGUN}, active.2[indexOf(active.1, n)], NULL) AS active,
               if({_BEGUN}, voice.2[indexOf(voice.1, n)], NULL) AS voice_active
        FROM (
            SELECT cohort, count() AS joined, {_per_week("message_weeks")} AS active,
                   {_per_week("voice_weeks")} AS voice
            FROM (
                SELECT m.week AS cohort,
                       {_week_numbers(_local_weeks(_TIMES[source]))} AS message_weeks,
                       {_week_numbers("v.weeks")} AS voice_weeks
                FROM ({_COHORT}) AS m
                LEFT JOIN ({_MESSAGES[source]}) AS a ON a.user_id = m.user_id
                LEFT JOIN ({_VOICE}) AS v ON v.user_id = m.user_id
            )
            GROUP BY cohort
        ) ARRAY JOIN arrayMap(k -> toUInt16(k), range({{weeks:UInt16}})) AS n
        ORDER BY cohort, n
    """


async def retention(
    client: AsyncClient,
    guild_id: int,
    tz: str,
    since: datetime,
    until: datetime,
    *,
    weeks: int = 8,
    include_bots: bool = False,
    source: Literal["rollup", "raw"] = "rollup",
) -> list[Cohort]:
    """Cohorts of members whose first join lies in [since, until), oldest first."""
    p = params(guild_id, since, until, tz=check_tz(tz), bots=include_bots, weeks=weeks)
    joined: dict[date, int] = {}
    active: dict[date, list[int | None]] = {}
    voice: dict[date, list[int | None]] = {}
    for week, size, n, members, voice_members in await rows(client, cohort_sql(source), p):
        joined[week] = int(size)
        active.setdefault(week, [0] * weeks)[int(n)] = _count(members)
        voice.setdefault(week, [0] * weeks)[int(n)] = _count(voice_members)
    return [
        Cohort(week, joined[week], tuple(active[week]), tuple(voice[week]))
        for week in sorted(joined)
    ]


def _count(value: int | None) -> int | None:
    return None if value is None else int(value)
