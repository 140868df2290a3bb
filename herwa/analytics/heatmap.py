"""Activity heatmap: messages per day of week x hour of day in the guild's time zone."""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from herwa.analytics._query import NOT_DELETED, SINCE, UNTIL, check_tz, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Heatmap:
    tz: str
    cells: tuple[tuple[int, ...], ...]  # [day 0 = Monday][hour 0..23], local time

    @property
    def total(self) -> int:
        return sum(map(sum, self.cells))


_ROLLUP = f"""
    SELECT toDayOfWeek(toTimeZone(bucket, {{tz:String}})) AS dow,
           toHour(toTimeZone(bucket, {{tz:String}})) AS hour, sum(messages) AS total
    FROM message_activity_15m FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND bucket >= {SINCE} AND bucket < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    GROUP BY dow, hour
"""

_RAW = f"""
    SELECT toDayOfWeek(toTimeZone(created_at, {{tz:String}})) AS dow,
           toHour(toTimeZone(created_at, {{tz:String}})) AS hour, count()
    FROM messages FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND created_at >= {SINCE} AND created_at < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}}) AND {NOT_DELETED}
    GROUP BY dow, hour
"""


def heatmap_sql() -> str:
    """(dow 1 = Monday, local hour, messages) from the rollup; the Grafana heatmap panel runs
    this same statement (herwa.analytics.dashboard). Parameters: guild_id, tz, since, until,
    bots."""
    return _ROLLUP


async def heatmap(
    client: AsyncClient,
    guild_id: int,
    tz: str,
    since: datetime,
    until: datetime,
    *,
    include_bots: bool = False,
    source: Literal["rollup", "raw"] = "rollup",
) -> Heatmap:
    """Exact in every zone from the 15-minute rollup; bounds act at 15-minute granularity."""
    grid = [[0] * 24 for _ in range(7)]
    sql = heatmap_sql() if source == "rollup" else _RAW
    for dow, hour, count in await rows(
        client, sql, params(guild_id, since, until, tz=check_tz(tz), bots=include_bots)
    ):
        grid[int(dow) - 1][int(hour)] = int(count)
    return Heatmap(tz, tuple(tuple(day) for day in grid))
