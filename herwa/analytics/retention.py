"""Retention cohorts: members by the local week they first joined → active in week N.

A cohort member is "active" in week N when they sent at least one (not deleted) message in the
N-th local week after their join week, "voice-active" when a voice session of theirs started in
it. Weeks start on Monday in the guild's time zone.

Message activity comes from the per-author week arrays (message_activity_weeks_by_author:
per UTC week with a live message, its first and last one), exact in every time zone (+05:30
and +05:45 included, no raw fallback needed): a UTC week touches at most two local weeks, so the
local weeks an author was active in that week are exactly those of its first and last live
message (migration 0005 explains why). ``source="raw"`` reads the messages themselves.

The query handles one row per member: the arrays are joined to the cohort (ClickHouse builds its
hash table from the right side, so the cohort is put there), cut to the UTC weeks that can fall
in the member's first ``weeks`` local weeks, and only those few times are converted to local
weeks. Duplicates (two times of one member in one local week) are left to ``uniqExact``. Cohort
sizes, message and voice matrices come back from one statement, in one round trip.

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
    active: tuple[int, ...]  # [N] members active in week N (0 = the join week)
    voice_active: tuple[int, ...]


_COHORT = f"""
    SELECT user_id, toStartOfWeek(toTimeZone(min(at), {{tz:String}}), 1) AS week
    FROM member_events
    WHERE guild_id = {{guild_id:UInt64}} AND event = 'join' AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY user_id
    HAVING min(at) >= {SINCE} AND min(at) < {UNTIL}
"""

# The UTC weeks whose activity can fall in a cohort's local weeks 0 .. weeks-1: a UTC week
# touches only the local weeks starting up to a week before or after its Monday.
_WINDOW = "w >= c.week - 7 AND w < c.week + 7 * ({weeks:UInt16} + 1)"

# (user_id, cohort, week): a cohort member's activity by local week, duplicates allowed.
_MESSAGES = {
    "rollup": f"""
        SELECT user_id, cohort, toStartOfWeek(toTimeZone(at, {{tz:String}}), 1) AS week
        FROM (
            SELECT c.user_id AS user_id, c.week AS cohort,
                   arrayConcat(arrayFilter((t, w) -> {_WINDOW}, a.first_at, a.weeks),
                               arrayFilter((t, w) -> {_WINDOW}, a.last_at, a.weeks)) AS times
            FROM (
                SELECT author_id, weeks, first_at, last_at
                FROM message_activity_weeks_by_author FINAL
                WHERE guild_id = {{guild_id:UInt64}}
            ) AS a
            INNER JOIN cohort AS c ON a.author_id = c.user_id
        ) ARRAY JOIN times AS at
    """,
    "raw": f"""
        SELECT c.user_id AS user_id, c.week AS cohort,
               toStartOfWeek(toTimeZone(m.created_at, {{tz:String}}), 1) AS week
        FROM (
            SELECT author_id, created_at FROM messages FINAL
            WHERE guild_id = {{guild_id:UInt64}} AND {NOT_DELETED}
        ) AS m
        INNER JOIN cohort AS c ON m.author_id = c.user_id
    """,
}

_VOICE = """
    SELECT c.user_id AS user_id, c.week AS cohort,
           toStartOfWeek(toTimeZone(v.joined_at, {tz:String}), 1) AS week
    FROM (SELECT user_id, joined_at FROM voice_sessions WHERE guild_id = {guild_id:UInt64}) AS v
    INNER JOIN cohort AS c ON v.user_id = c.user_id
"""


def _matrix(activity: str) -> str:
    return f"""
        SELECT cohort, toUInt16(intDiv(toInt32(week) - toInt32(cohort), 7)) AS n,
               uniqExact(user_id) AS members
        FROM ({activity})
        WHERE week >= cohort AND week < cohort + 7 * {{weeks:UInt16}}
        GROUP BY cohort, n
    """


def cohort_sql(source: Literal["rollup", "raw"] = "rollup") -> str:
    """One row per cohort and week N: (cohort, joined, n, active, voice_active).

    Parameters: guild_id, tz, since, until (epoch seconds), weeks, bots. The Grafana retention
    panel runs this same statement (herwa.analytics.dashboard).
    """
    return f"""
        WITH cohort AS ({_COHORT})
        SELECT j.cohort AS cohort, j.joined AS joined, j.n AS n,
               m.members AS active, v.members AS voice_active
        FROM (
            SELECT cohort, joined, toUInt16(arrayJoin(range({{weeks:UInt16}}))) AS n
            FROM (SELECT week AS cohort, count() AS joined FROM cohort GROUP BY cohort)
        ) AS j
        LEFT JOIN ({_matrix(_MESSAGES[source])}) AS m ON m.cohort = j.cohort AND m.n = j.n
        LEFT JOIN ({_matrix(_VOICE)}) AS v ON v.cohort = j.cohort AND v.n = j.n
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
    active: dict[date, list[int]] = {}
    voice: dict[date, list[int]] = {}
    for week, size, n, members, voice_members in await rows(client, cohort_sql(source), p):
        joined[week] = int(size)
        active.setdefault(week, [0] * weeks)[int(n)] = int(members)
        voice.setdefault(week, [0] * weeks)[int(n)] = int(voice_members)
    return [
        Cohort(week, joined[week], tuple(active[week]), tuple(voice[week]))
        for week in sorted(joined)
    ]
