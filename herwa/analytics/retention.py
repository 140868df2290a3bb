"""Retention cohorts: members by the local week they first joined → active in week N.

A cohort member is "active" in week N when they sent at least one (not deleted) message in the
N-th local week after their join week, "voice-active" when a voice session of theirs started in
it. Weeks start on Monday in the guild's time zone.

Message activity comes from the per-(guild, author, UTC day) rollup, exact in every time zone
(+05:30 and +05:45 included, no raw fallback needed): a UTC day spans 24 hours and local weeks
are at least 167 hours apart, so a day touches at most one local week boundary and the local
weeks an author was active in that day are exactly those of the day's first and last live
message (``first_at``/``last_at``, kept per row). ``source="raw"`` reads the messages themselves.
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
    FROM member_events FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND event = 'join' AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY user_id
    HAVING min(at) >= {SINCE} AND min(at) < {UNTIL}
"""

_ACTIVITY = {
    "rollup": """
        SELECT DISTINCT author_id AS user_id,
               toStartOfWeek(toTimeZone(at, {tz:String}), 1) AS week
        FROM message_activity_daily FINAL ARRAY JOIN [first_at, last_at] AS at
        WHERE guild_id = {guild_id:UInt64} AND messages > 0
    """,
    "raw": f"""
        SELECT DISTINCT author_id AS user_id,
               toStartOfWeek(toTimeZone(created_at, {{tz:String}}), 1) AS week
        FROM messages FINAL WHERE guild_id = {{guild_id:UInt64}} AND {NOT_DELETED}
    """,
}

_VOICE = """
    SELECT DISTINCT user_id, toStartOfWeek(toTimeZone(joined_at, {tz:String}), 1) AS week
    FROM voice_sessions FINAL WHERE guild_id = {guild_id:UInt64}
"""


def _matrix_sql(activity: str) -> str:
    return f"""
        WITH cohort AS ({_COHORT}), activity AS ({activity})
        SELECT c.week, intDiv(toInt32(a.week) - toInt32(c.week), 7) AS n, uniqExact(c.user_id)
        FROM cohort AS c INNER JOIN activity AS a ON a.user_id = c.user_id
        WHERE a.week >= c.week AND n < {{weeks:UInt16}}
        GROUP BY c.week, n
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
    joined = {
        week: int(n)
        for week, n in await rows(client, f"SELECT week, count() FROM ({_COHORT}) GROUP BY week", p)
    }
    active = {w: [0] * weeks for w in joined}
    voice = {w: [0] * weeks for w in joined}
    for target, sql in ((active, _matrix_sql(_ACTIVITY[source])), (voice, _matrix_sql(_VOICE))):
        for week, n, members in await rows(client, sql, p):
            target[week][int(n)] = int(members)
    return [
        Cohort(week, joined[week], tuple(active[week]), tuple(voice[week]))
        for week in sorted(joined)
    ]
