"""Retention cohorts: members by the local week they first joined → active in week N.

A cohort member is "active" in week N when they sent at least one (not deleted) message in the
N-th local week after their join week, "voice-active" when a voice session of theirs started in
it. Weeks start on Monday in the guild's time zone.

Message and voice activity come, in the guild's own time zone, from each member's active local
weeks (message_local_weeks, migration 0013; voice_local_weeks, 0014), which the ETL keeps in the
zone the guild has set (etl/local_weeks.py): the statement slices them, with no time to convert.
That needs the guild's recorded zone first, one more round trip reading one row; the
conversions it saves were about half of the statement (benchmarks/README.md).

In any other zone (a viewer's choice in the Grafana panel, which runs :func:`cohort_sql`, a
guild whose new zone the next ETL run has not rebuilt yet, or whose voice weeks it has not
written yet after 0014) message activity comes from the per-author week
arrays (message_activity_weeks_by_author: per UTC week with a live message, its first and last
one), exact in every zone (+05:30 and +05:45 included): a UTC week touches at most two local
weeks, so the local weeks an author was active in that week are exactly those of its first and
last live message (migration 0005 explains why). Both give the same answer; ``source="raw"``
reads the messages themselves.

Cohorts come from member_joins (the joins alone, a row each) and, but in the recorded zone,
voice from voice_starts_by_member (per member, the set of their sessions' start times), both
kept by ClickHouse from the loaded rows (migration 0010); ``source="raw"`` reads member_events
and voice_sessions instead.

The query handles one row per member: the cohort is joined to each member's week arrays and
voice start times (both small per member). The times are cut to those that can fall in the
member's first ``weeks`` local weeks and only those converted; each member then has the
distinct local Mondays they were active in, which ``sumMap`` counts per cohort (no per-week
vector per member, no lambda inside a lambda: ClickHouse evaluates a lambda's captured
expressions again for every element). The cohort is read once, and cohort sizes,
message and voice matrices come back from one statement, in one round trip.

Member joins and voice sessions are read without FINAL (but the per-member voice sets, which
need it to be one row per member), unlike elsewhere: what is taken from them (a member's
earliest join, the distinct local weeks of their voice starts) is the same with a row loaded
twice, as every version of such a row has the same member, time and bot flag, and deletions
are masked either way.
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


# A member's first join: the min over their joins, bots left out unless asked.
_COHORT = {
    "rollup": f"""
        SELECT user_id, toStartOfWeek(toTimeZone(min(at), {{tz:String}}), 1) AS week
        FROM member_joins
        WHERE guild_id = {{guild_id:UInt64}} AND (NOT is_bot OR {{bots:Bool}})
        GROUP BY user_id
        HAVING min(at) >= {SINCE} AND min(at) < {UNTIL}
    """,
    "raw": f"""
        SELECT user_id, toStartOfWeek(toTimeZone(min(at), {{tz:String}}), 1) AS week
        FROM member_events
        WHERE guild_id = {{guild_id:UInt64}} AND event = 'join' AND (NOT is_bot OR {{bots:Bool}})
        GROUP BY user_id
        HAVING min(at) >= {SINCE} AND min(at) < {UNTIL}
    """,
}

# Per member, what their activity is read from (joined on user_id).
_MESSAGES = {
    "local_weeks": """
        SELECT author_id AS user_id, weeks
        FROM message_local_weeks FINAL WHERE guild_id = {guild_id:UInt64} AND tz = {tz:String}
    """,
    "any_zone": """
        SELECT author_id AS user_id, weeks, first_at, last_at
        FROM message_activity_weeks_by_author FINAL WHERE guild_id = {guild_id:UInt64}
    """,
    "raw": f"""
        SELECT author_id AS user_id, groupArray(created_at) AS times
        FROM messages FINAL WHERE guild_id = {{guild_id:UInt64}} AND {NOT_DELETED}
        GROUP BY user_id
    """,
}
# Per member, the start times of their voice sessions. The raw read keeps only those that can
# fall in some cohort's first weeks: a cohort's local Monday lies at most 7 days and 14 hours
# before its first join, its last week ends at most 7 * weeks days and 12 hours after the last
# one. The per-member sets are cut to each member's own weeks below, before any conversion.
_VOICE = {
    "local_weeks": """
        SELECT user_id, weeks
        FROM voice_local_weeks FINAL WHERE guild_id = {guild_id:UInt64} AND tz = {tz:String}
    """,
    "rollup": """
        SELECT user_id, joined_at AS times
        FROM voice_starts_by_member FINAL WHERE guild_id = {guild_id:UInt64}
    """,
    "raw": f"""
        SELECT user_id, groupArray(joined_at) AS times
        FROM voice_sessions
        WHERE guild_id = {{guild_id:UInt64}} AND joined_at >= {SINCE} - INTERVAL 8 DAY
          AND joined_at < {UNTIL} + toIntervalDay(7 * {{weeks:UInt16}} + 8)
        GROUP BY user_id
    """,
}

# A cohort's local weeks 0 .. weeks-1 start at its local Monday 00:00, which is between Sunday
# 10:00 and Monday 12:00 UTC: these bounds hold them with room to spare.
_IN_WINDOW = (
    "t >= toDateTime(m.week - 1, 'UTC') AND t < toDateTime(m.week + 7 * {weeks:UInt16} + 1, 'UTC')"
)
# For the rollup, the UTC weeks that can touch them: a UTC week touches only the local weeks
# starting up to a week before or after its Monday, so those of the weeks + 2 UTC Mondays from
# m.week - 7 on. The week arrays are ascending, so these are a slice of at most weeks + 2
# elements from the first week not before m.week - 7: one lambda pass to find its start instead
# of a filter per array (ClickHouse copies a lambda's captured columns for every element). When
# the member skipped weeks the slice runs past the window; those times fall in local weeks
# after week weeks-1, which are counted but never read.
_SLICE = {
    "any_zone": "arrayCount(w -> w < m.week - 7, a.weeks) + 1 AS slice_from,",
    "raw": "",
}
# The times (UTC) of a member's activity that can fall in their first weeks.
_TIMES = {
    "any_zone": """
        arrayConcat(arraySlice(a.first_at, slice_from, {weeks:UInt16} + 2),
                    arraySlice(a.last_at, slice_from, {weeks:UInt16} + 2))
    """,
    "raw": f"arrayFilter(t -> {_IN_WINDOW}, a.times)",
}
_VOICE_TIMES = f"arrayFilter(t -> {_IN_WINDOW}, v.times)"


def _local_weeks(times: str) -> str:
    """The distinct local Mondays of ``times``."""
    return f"arrayDistinct(arrayMap(t -> toStartOfWeek(toTimeZone(t, {{tz:String}}), 1), {times}))"


def _first_weeks(alias: str) -> str:
    """A member's local Mondays ``alias``.weeks (distinct, ascending) from the join week on:
    the first ``weeks`` hold every one in the window (later ones are counted but never read)."""
    return (
        f"arraySlice({alias}.weeks, arrayCount(w -> w < m.week, {alias}.weeks) + 1,"
        " {weeks:UInt16})"
    )


def _message_weeks(source: Statement) -> str:
    """A member's distinct local Mondays with a message that can be in their first weeks."""
    if source == "local_weeks":
        return _first_weeks("a")
    return f"{_SLICE[source]} {_local_weeks(_TIMES[source])}"


def _voice_weeks(source: Statement) -> str:
    """A member's distinct local Mondays with a voice session that can be in their first
    weeks."""
    if source == "local_weeks":
        return _first_weeks("v")
    return _local_weeks(_VOICE_TIMES)


def _counted(weeks: str) -> str:
    """``weeks`` (distinct) as a map of each to 1, for sumMap to count members per week."""
    return f"CAST(({weeks}, arrayWithConstant(length({weeks}), toUInt64(1))), 'Map(Date, UInt64)')"


# Week N of a cohort that has not begun yet (local time) has no members to count: NULL, which
# the chart and the Grafana panel leave blank, where 0 would read as "everyone left".
_BEGUN = "cohort + 7 * n <= toDate(now(), {tz:String})"


# What a statement reads messages from: local weeks precomputed in the guild's recorded zone
# (correct only in that zone), the per-UTC-week arrays (any zone), or the messages themselves.
Statement = Literal["local_weeks", "any_zone", "raw"]
# The tables the statements read members' joins and voice from, which have no zone.
_ROLLUP_OR_RAW: dict[Statement, Literal["rollup", "raw"]] = {
    "local_weeks": "rollup",
    "any_zone": "rollup",
    "raw": "raw",
}


def cohort_sql(source: Statement = "any_zone") -> str:
    """One row per cohort and week N: (cohort, joined, n, active, voice_active), the last
    two NULL for a week N that has not begun.

    Each member's distinct local Mondays (of the times that can fall in their first weeks) are
    counted per cohort by ``sumMap``, keyed by the Monday itself; week N of a cohort is then its
    key ``cohort + 7 * N``, and Mondays before the join week or after the last counted one are
    never read. Turning them into week numbers per member instead cost a fifth more (ClickHouse
    copies a lambda's captured columns for every element).

    Parameters: guild_id, tz, since, until (epoch seconds), weeks, bots. The Grafana retention
    panel runs the ``any_zone`` statement (herwa.analytics.dashboard): its viewer picks the
    zone. ``local_weeks`` answers only in the guild's recorded zone (:func:`recorded_zone`).
    """
    joins = _ROLLUP_OR_RAW[source]
    voice = "local_weeks" if source == "local_weeks" else joins
    return f"""
        SELECT cohort, joined, n, if({_BEGUN}, active[cohort + 7 * n], NULL) AS active,
               if({_BEGUN}, voice[cohort + 7 * n], NULL) AS voice_active
        FROM (
            SELECT cohort, count() AS joined, sumMap(message_counted) AS active,
                   sumMap(voice_counted) AS voice
            FROM (
                SELECT m.week AS cohort, {_message_weeks(source)} AS message_weeks,
                       {_voice_weeks(source)} AS voice_weeks,
                       {_counted("message_weeks")} AS message_counted,
                       {_counted("voice_weeks")} AS voice_counted
                FROM ({_COHORT[joins]}) AS m
                LEFT JOIN ({_MESSAGES[source]}) AS a ON a.user_id = m.user_id
                LEFT JOIN ({_VOICE[voice]}) AS v ON v.user_id = m.user_id
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
    source: Literal["rollup"] | Statement = "rollup",
) -> list[Cohort]:
    """Cohorts of members whose first join lies in [since, until), oldest first.

    ``rollup`` reads the precomputed local weeks when ``tz`` is the guild's recorded zone, the
    per-UTC-week arrays and voice sets otherwise; a :data:`Statement` runs that one
    (``local_weeks`` raises ValueError in another zone, where its answer would be wrong).
    """
    p = params(guild_id, since, until, tz=check_tz(tz), bots=include_bots, weeks=weeks)
    statement: Statement
    if source == "rollup" or source == "local_weeks":
        recorded = await recorded_zone(client, guild_id)
        if source == "local_weeks" and recorded != tz:
            where = "incomplete" if recorded is None else f"in {recorded}"
            raise ValueError(f"guild {guild_id}'s local weeks are {where}, not in {tz}")
        statement = "local_weeks" if recorded == tz else "any_zone"
    else:
        statement = source
    joined: dict[date, int] = {}
    active: dict[date, list[int | None]] = {}
    voice: dict[date, list[int | None]] = {}
    for week, size, n, members, voice_members in await rows(client, cohort_sql(statement), p):
        joined[week] = int(size)
        active.setdefault(week, [0] * weeks)[int(n)] = _count(members)
        voice.setdefault(week, [0] * weeks)[int(n)] = _count(voice_members)
    return [
        Cohort(week, joined[week], tuple(active[week]), tuple(voice[week]))
        for week in sorted(joined)
    ]


async def recorded_zone(client: AsyncClient, guild_id: int) -> str | None:
    """The zone the guild's precomputed local weeks are in ('UTC' when the ETL recorded none,
    migration 0013); None while its voice weeks are not complete in it (0014)."""
    result = await rows(
        client,
        "SELECT argMax(tz, version), argMax(voice, version), count()"
        " FROM message_local_weeks_zone WHERE guild_id = {guild_id:UInt64}",
        {"guild_id": guild_id},
    )
    tz, voice, recorded = result[0]
    if not recorded:
        return "UTC"
    return str(tz) if voice else None


def _count(value: int | None) -> int | None:
    return None if value is None else int(value)
