"""What every analytics query shares: parameters, time ranges and the row fetch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# Every query reads FINAL: ReplacingMergeTree merges eventually, and a batch loaded twice must
# not be counted twice. Deleted messages are never counted; bots only when asked.
NOT_DELETED = (
    "message_id NOT IN (SELECT message_id FROM message_deletions "
    "WHERE guild_id = {guild_id:UInt64})"
)


def epoch(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("analytics time bounds must be timezone-aware")
    return int(at.astimezone(UTC).timestamp())


def check_tz(tz: str) -> str:
    ZoneInfo(tz)  # raises for anything that is not an IANA name; bound as a parameter anyway
    return tz


def local_days(tz: str, since: datetime, until: datetime) -> list[date]:
    """Every local day of ``tz`` that [since, until) touches, in order: the days a per-day
    answer has a row for, zero or not."""
    zone = ZoneInfo(tz)
    day = since.astimezone(zone).date()
    last = (until - timedelta(microseconds=1)).astimezone(zone).date()
    return [day + timedelta(days=n) for n in range((last - day).days + 1)]


def params(guild_id: int, since: datetime, until: datetime, **extra: Any) -> dict[str, Any]:
    if until <= since:
        raise ValueError("until must be after since")
    return {"guild_id": guild_id, "since": epoch(since), "until": epoch(until), **extra}


# Bound as UInt32 epoch seconds and turned into UTC times inside the query, as DateTime64(3):
# the raw tables' times are DateTime64(3) and partitioned by them, and ClickHouse 26.9's
# partition minmax index skips a part whose times lie in the last second before a strict
# DateTime bound (a row at 10:59:59.5 was not found by ``< toDateTime(11:00)``). Against the
# rollups' DateTime columns a whole-second DateTime64 compares exactly.
SINCE = "toDateTime64({since:UInt32}, 3, 'UTC')"
UNTIL = "toDateTime64({until:UInt32}, 3, 'UTC')"


async def rows(
    client: AsyncClient, sql: str, parameters: dict[str, Any]
) -> Sequence[Sequence[Any]]:
    result = await client.query(sql, parameters=parameters)
    return result.result_rows
