"""Activity per local day: messages, active members and voice time, as /export writes them
and the Grafana daily panels draw them.

Each figure is what the command answering it for one whole local day would say: messages from
the 15-minute rollup as the heatmap counts them (exact in every zone), active members from one
row per author and UTC day as /overview counts them, and voice time clipped to each day (and
the range) as /overview clips it, so a session across midnight counts on both days and a day's
figure is that day's /overview figure.
"""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from herwa.analytics._query import SINCE, UNTIL, check_tz, local_days, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class DayActivity:
    day: date  # local
    messages: int
    active_members: int
    voice_seconds: float
    voice_members: int


_MESSAGES = f"""
    SELECT toDate(toTimeZone(bucket, {{tz:String}})) AS day, sum(messages) AS messages
    FROM message_activity_15m FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND bucket >= {SINCE} AND bucket < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY day
"""

# An author's row of a UTC day is repeated once per local day between its first and last
# message, then kept for a local day when the day's part of the range, [starts, ends), can hold
# one of them: their last message is at or after its start and their first before its end. That
# is /overview's rule (herwa.analytics.members), exact wherever [starts, ends) reaches one end
# of its UTC day, as every whole local day's part does.
_FIRST_LOCAL = "toDate(toTimeZone(first_at, {tz:String}))"
_ACTIVE = f"""
    SELECT day, uniqExact(author_id) AS active_members
    FROM (
        SELECT author_id, first_at, last_at, local_day AS day,
               greatest(toTimeZone(toDateTime(local_day, {{tz:String}}), 'UTC'), {SINCE}) AS starts,
               least(toTimeZone(toDateTime(local_day + 1, {{tz:String}}), 'UTC'), {UNTIL}) AS ends
        FROM message_activity_author_days FINAL
        ARRAY JOIN arrayMap(k -> {_FIRST_LOCAL} + k,
                            range(toUInt32(dateDiff('day', {_FIRST_LOCAL},
                                  toDate(toTimeZone(last_at, {{tz:String}}))) + 1))) AS local_day
        WHERE guild_id = {{guild_id:UInt64}} AND day >= toDate({SINCE})
          AND day <= toDate({UNTIL} - 1) AND messages > 0
          AND last_at >= {SINCE} AND first_at < {UNTIL} AND (NOT is_bot OR {{bots:Bool}})
    )
    WHERE starts < ends AND last_at >= starts AND first_at < ends
    GROUP BY day
"""

# Every session is repeated once per local day it touches inside the range, then clipped to
# that day: [starts, ends) is the day's part of the range, in UTC.
_LOCAL_DAY = "toDate(toTimeZone({at}, {{tz:String}}))"
_FIRST_DAY = _LOCAL_DAY.format(at=f"greatest(joined_at, {SINCE})")
_LAST_DAY = _LOCAL_DAY.format(at=f"least(left_at, {UNTIL})")
_VOICE = f"""
    SELECT day,
           sum(greatest(0, dateDiff('millisecond', greatest(joined_at, starts),
                                    least(left_at, ends))) / 1000) AS voice_seconds,
           uniqExact(user_id) AS voice_members
    FROM (
        SELECT user_id, joined_at, left_at, day,
               greatest(toTimeZone(toDateTime(day, {{tz:String}}), 'UTC'), {SINCE}) AS starts,
               least(toTimeZone(toDateTime(day + 1, {{tz:String}}), 'UTC'), {UNTIL}) AS ends
        FROM voice_sessions FINAL
        ARRAY JOIN arrayMap(k -> {_FIRST_DAY} + k,
                            range(toUInt32(dateDiff('day', {_FIRST_DAY}, {_LAST_DAY}) + 1))) AS day
        WHERE guild_id = {{guild_id:UInt64}} AND joined_at < {UNTIL} AND left_at > {SINCE}
          AND (NOT is_bot OR {{bots:Bool}})
    )
    WHERE joined_at < ends AND left_at > starts
    GROUP BY day
"""


def messages_sql() -> str:
    """(local day, messages). Parameters: guild_id, tz, since, until, bots."""
    return _MESSAGES


def active_members_sql() -> str:
    """(local day, active_members). Parameters: guild_id, tz, since, until, bots."""
    return _ACTIVE


def voice_sql() -> str:
    """(local day, voice_seconds, voice_members). Parameters: guild_id, tz, since, until,
    bots."""
    return _VOICE


async def daily(
    client: AsyncClient,
    guild_id: int,
    tz: str,
    since: datetime,
    until: datetime,
    *,
    include_bots: bool = False,
) -> list[DayActivity]:
    """One row per local day from ``since`` to ``until`` (exclusive), gaps filled with 0."""
    p = params(guild_id, since, until, tz=check_tz(tz), bots=include_bots)
    messages = {day: int(n) for day, n in await rows(client, _MESSAGES, p)}
    active = {day: int(n) for day, n in await rows(client, _ACTIVE, p)}
    voice = {day: (float(s), int(n)) for day, s, n in await rows(client, _VOICE, p)}
    return [
        DayActivity(day, messages.get(day, 0), active.get(day, 0), *voice.get(day, (0.0, 0)))
        for day in local_days(tz, since, until)
    ]
