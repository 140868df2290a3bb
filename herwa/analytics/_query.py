"""What every analytics query shares: parameters, time ranges and the row fetch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
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


def params(guild_id: int, since: datetime, until: datetime, **extra: Any) -> dict[str, Any]:
    if until <= since:
        raise ValueError("until must be after since")
    return {"guild_id": guild_id, "since": epoch(since), "until": epoch(until), **extra}


# Bound as UInt32 epoch seconds and turned into UTC DateTimes inside the query.
SINCE = "toDateTime({since:UInt32}, 'UTC')"
UNTIL = "toDateTime({until:UInt32}, 'UTC')"


async def rows(
    client: AsyncClient, sql: str, parameters: dict[str, Any]
) -> Sequence[Sequence[Any]]:
    result = await client.query(sql, parameters=parameters)
    return result.result_rows
