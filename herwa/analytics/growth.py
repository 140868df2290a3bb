"""Member growth: joins, leaves and the member count per local day."""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from herwa.analytics._query import SINCE, UNTIL, check_tz, local_days, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class GrowthPoint:
    day: date  # local
    joins: int
    leaves: int
    net: int  # cumulative joins - leaves since the start of the range
    member_count: int | None  # the day's snapshot, if one was taken


_EVENTS = f"""
    SELECT toDate(toTimeZone(at, {{tz:String}})) AS day,
           countIf(event = 'join') AS joins, countIf(event = 'leave') AS leaves
    FROM member_events FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND at >= {SINCE} AND at < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY day
"""


def growth_sql() -> str:
    """(local day, joins, leaves) for the days with any; the Grafana growth panel runs this
    same statement (herwa.analytics.dashboard). Parameters: guild_id, tz, since, until, bots."""
    return _EVENTS


# Snapshot days are UTC calendar days as the bot records them.
_SNAPSHOTS = f"""
    SELECT day, argMax(member_count, taken_at) AS member_count
    FROM member_count_snapshots FINAL
    WHERE guild_id = {{guild_id:UInt64}}
      AND day >= toDate({SINCE}) AND day <= toDate({UNTIL})
    GROUP BY day
"""


def member_count_sql() -> str:
    """(UTC day, member_count) for the days with a snapshot; the Grafana member count panel
    runs this same statement (herwa.analytics.dashboard). Parameters: guild_id, since, until."""
    return _SNAPSHOTS


async def growth(
    client: AsyncClient,
    guild_id: int,
    tz: str,
    since: datetime,
    until: datetime,
    *,
    include_bots: bool = False,
) -> list[GrowthPoint]:
    """One point per local day from ``since`` to ``until`` (exclusive), gaps filled with 0."""
    p = params(guild_id, since, until, tz=check_tz(tz), bots=include_bots)
    events = {day: (int(j), int(lv)) for day, j, lv in await rows(client, growth_sql(), p)}
    snapshots = {day: int(n) for day, n in await rows(client, member_count_sql(), p)}
    points, net = [], 0
    for day in local_days(tz, since, until):
        joins, leaves = events.get(day, (0, 0))
        net += joins - leaves
        points.append(GrowthPoint(day, joins, leaves, net, snapshots.get(day)))
    return points
