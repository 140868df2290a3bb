"""ETL-maintained hourly rollups, recomputed per affected bucket so reloads never double count.

A materialized view adds whatever is inserted; if a batch is inserted twice (a crash between
the ClickHouse insert and the Postgres commit) the view counts it twice, and it cannot subtract
a message deleted later. Instead, after every message or deletion batch, each affected
(guild, UTC hour) is recomputed from ``messages FINAL`` minus ``message_deletions`` and written
again whole, with a newer version; keys that no longer have messages are written as zero rows so
they replace the stale counts. The recompute runs before the batch's Postgres commit, so a crash
anywhere leaves the batch unmarked and the next run recomputes the same buckets again.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from clickhouse_connect.driver.external import ExternalData

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# The CSV batch as ClickHouse sees it, column for column (see families.py).
_BATCH_STRUCTURE = {
    "messages": (
        "message_id UInt64, guild_id UInt64, channel_id UInt64, thread_id UInt64, "
        "author_id UInt64, created_at DateTime64(3, 'UTC'), kind String, is_bot UInt8, "
        "source String, version UInt64"
    ),
    "deletions": (
        "message_id UInt64, guild_id UInt64, channel_id UInt64, "
        "deleted_at DateTime64(3, 'UTC'), version UInt64"
    ),
}

_AFFECTED = {
    "messages": "SELECT DISTINCT guild_id, toStartOfHour(created_at) FROM batch",
    "deletions": (
        "SELECT DISTINCT guild_id, toStartOfHour(created_at) FROM messages "
        "WHERE guild_id IN (SELECT guild_id FROM batch) "
        "AND (guild_id, message_id) IN (SELECT guild_id, message_id FROM batch)"
    ),
}

CSV_SETTINGS = {"date_time_input_format": "best_effort", "format_csv_null_representation": "\\N"}


def _version() -> int:
    return time.time_ns() // 1_000_000


async def affected_buckets_from_batch(
    ch: AsyncClient, kind: str, batch_csv: bytes
) -> list[tuple[int, int]]:
    """(guild_id, hour as epoch seconds) touched by a CSV batch of ``kind``."""
    external = ExternalData(
        file_name="batch", data=batch_csv, fmt="CSV", structure=_BATCH_STRUCTURE[kind]
    )
    result = await ch.query(
        f"SELECT guild_id, toUnixTimestamp(h) FROM ({_AFFECTED[kind]}) AS a(guild_id, h)",
        external_data=external,
        settings=CSV_SETTINGS,
    )
    return [(int(g), int(h)) for g, h in result.result_rows]


async def recompute(ch: AsyncClient, buckets: list[tuple[int, int]]) -> None:
    """Rewrite both message rollups for these (guild_id, hour epoch seconds) buckets."""
    if not buckets:
        return
    # Bounded by the batch (≤ one bucket per row); chunked to keep each statement modest.
    for start in range(0, len(buckets), 5000):
        chunk = buckets[start : start + 5000]
        await _recompute_chunk(ch, chunk)


async def _recompute_chunk(ch: AsyncClient, buckets: list[tuple[int, int]]) -> None:
    guilds = sorted({g for g, _ in buckets})
    lo = min(h for _, h in buckets)
    hi = max(h for _, h in buckets) + 3600
    # Ints produced by this module, not user input: inlining keeps the URL short, and ClickHouse
    # builds one hash set for the tuple IN either way.
    pairs = ",".join(f"({g},{h})" for g, h in buckets)
    params = {"guilds": guilds, "lo": lo, "hi": hi, "version": _version()}
    live = f"""
        SELECT guild_id, created_at, channel_id, author_id, is_bot
        FROM messages FINAL
        WHERE guild_id IN {{guilds:Array(UInt64)}}
          AND created_at >= toDateTime({{lo:UInt32}}, 'UTC')
          AND created_at < toDateTime({{hi:UInt32}}, 'UTC')
          AND (guild_id, toUnixTimestamp(toStartOfHour(created_at))) IN ({pairs})
          AND (guild_id, message_id) NOT IN (
              SELECT guild_id, message_id FROM message_deletions
              WHERE guild_id IN {{guilds:Array(UInt64)}})
    """
    await ch.command(
        f"""
        INSERT INTO message_activity_hourly
            (guild_id, hour, channel_id, author_id, is_bot, messages, version)
        SELECT guild_id, hour, channel_id, author_id, max(bot), sum(n), {{version:UInt64}}
        FROM (
            SELECT guild_id, toStartOfHour(created_at) AS hour, channel_id, author_id,
                   is_bot AS bot, toUInt32(1) AS n
            FROM ({live})
            UNION ALL
            SELECT guild_id, hour, channel_id, author_id, is_bot, toUInt32(0)
            FROM message_activity_hourly FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND (guild_id, toUnixTimestamp(hour)) IN ({pairs})
        )
        GROUP BY guild_id, hour, channel_id, author_id
        """,
        parameters=params,
    )
    await ch.command(
        f"""
        INSERT INTO message_activity_15m (guild_id, bucket, is_bot, messages, version)
        SELECT guild_id, bucket, bot, sum(n), {{version:UInt64}}
        FROM (
            SELECT guild_id, toStartOfFifteenMinutes(created_at) AS bucket, is_bot AS bot,
                   toUInt32(1) AS n
            FROM ({live})
            UNION ALL
            SELECT guild_id, bucket, is_bot, toUInt32(0)
            FROM message_activity_15m FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND (guild_id, toUnixTimestamp(toStartOfHour(bucket))) IN ({pairs})
        )
        GROUP BY guild_id, bucket, bot
        """,
        parameters=params,
    )
