"""Online members by hour: how many distinct members were online (online, idle or do not
disturb) at some point in each hour of the guild's time zone, from the presence transitions.

A member is online from a transition to a status other than offline until their next
transition, or until the end of the range when there is none; a member who went online before
the range and did not change since counts in its first hours too.
"""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from herwa.analytics._query import SINCE, UNTIL, check_tz, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

_HOUR_US = 3_600_000_000

# Each online stretch [start, until) within the range becomes the local hours it touches.
_ONLINE_BY_HOUR = f"""
    SELECT toUnixTimestamp(hour) AS hour_start, uniqExact(user_id) AS members
    FROM (
        SELECT user_id, start, until, toStartOfHour(toTimeZone(start, {{tz:String}})) AS first
        FROM (
            SELECT user_id, status != 'offline' AS online,
                   greatest(at, toDateTime64({SINCE}, 6, 'UTC')) AS start,
                   least(leadInFrame(at, 1, toDateTime64({UNTIL}, 6, 'UTC')) OVER w,
                         toDateTime64({UNTIL}, 6, 'UTC')) AS until
            FROM presence_events FINAL
            WHERE guild_id = {{guild_id:UInt64}} AND at < {UNTIL}
            WINDOW w AS (PARTITION BY user_id ORDER BY at
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        )
        WHERE online AND until > start
    )
    ARRAY JOIN arrayMap(
        i -> first + toIntervalHour(i),
        range(toUInt64(intDiv(dateDiff('microsecond', first, until) - 1, {_HOUR_US}) + 1))
    ) AS hour
    GROUP BY hour_start
    ORDER BY hour_start
"""


@dataclass(frozen=True)
class OnlineHour:
    start: datetime  # the hour's start in the guild's time zone
    members: int


def online_by_hour_sql() -> str:
    """(hour start as epoch seconds, distinct members online in it). Parameters: guild_id,
    tz, since, until."""
    return _ONLINE_BY_HOUR


async def online_by_hour(
    client: AsyncClient, guild_id: int, tz: str, since: datetime, until: datetime
) -> list[OnlineHour]:
    """The hours of [since, until) in which someone was online, in order; ``until`` should not
    lie in the future (a member online now would count in hours still to come)."""
    zone = ZoneInfo(check_tz(tz))
    result = await rows(client, _ONLINE_BY_HOUR, params(guild_id, since, until, tz=tz))
    return [
        OnlineHour(datetime.fromtimestamp(int(start), zone), int(members))
        for start, members in result
    ]
