"""One claim → load → mark batch for one event family, exactly once in effect.

Per batch, inside one Postgres transaction:

1. ``COPY (WITH claimed AS (UPDATE … SET ch_ingested_at = now() WHERE ctid IN (SELECT … WHERE
   ch_ingested_at IS NULL LIMIT n FOR UPDATE SKIP LOCKED) RETURNING …) SELECT … ORDER BY key)
   TO STDOUT CSV``: the claim and the mark are one statement; Postgres renders the rows as CSV
   in ClickHouse column order, so no row passes through Python objects.
2. The CSV goes to ClickHouse as one insert with an ``insert_deduplication_token`` derived from
   its bytes (the fast path: an identical retry is dropped by the server).
3. The batch's (guild, hour) buckets are queued in ``etl_dirty_buckets`` (same transaction).
4. COMMIT makes the mark and the queue durable. Rollups of queued buckets are recomputed after
   the sync loop (rollups.flush) and dequeued only once recomputed.

A crash before 4 rolls the mark back: the next run claims the rows again and loads them again.
That is harmless because every ClickHouse table is a ReplacingMergeTree keyed by the natural id
and every query reads FINAL, and the rollups are recomputed rather than incremented.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from herwa.etl import rollups
from herwa.etl.families import Family

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# Test seam: called at each named step; raising there simulates a crash at that step.
FaultHook = Callable[[str, Family], Awaitable[None]]
FAULT_POINTS = ("claimed", "inserted", "before_commit", "rolled_up")


@dataclass(frozen=True)
class BatchResult:
    family: str
    rows: int  # rows loaded into ClickHouse and marked
    seconds: float
    deduplicated: bool  # ClickHouse recognised the batch token and stored nothing new


def claim_sql(family: Family, batch_rows: int) -> str:
    key = ", ".join(family.key)
    select = ", ".join(f"{expr} AS {name}" for name, expr in family.columns)
    opted_out = ""
    if family.user_column is not None:
        # Race guard only: opt-outs known before the run were purged already (purge_opted_out).
        opted_out = (
            "WHERE NOT EXISTS (SELECT 1 FROM opt_outs o WHERE o.guild_id = c.guild_id "
            f"AND o.user_id = c.{family.user_column})"
        )
    table = family.staging_table
    dirty = ""
    if family.rollup == "messages":
        # Data-modifying CTEs always run: the batch's buckets are queued in the same statement
        # (and transaction) that marks it.
        dirty = """,
        dirty AS (
            INSERT INTO etl_dirty_buckets (guild_id, hour)
            SELECT DISTINCT guild_id, date_trunc('hour', created_at) FROM claimed
            ON CONFLICT DO NOTHING
        )"""
    # ctid: the claimed rows are found again by physical address, whatever the key's shape.
    return f"""
        WITH claimed AS (
            UPDATE {table} SET ch_ingested_at = now()
            WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table} WHERE ch_ingested_at IS NULL
                LIMIT {int(batch_rows)} FOR UPDATE SKIP LOCKED))
            RETURNING *
        ){dirty}
        SELECT {select} FROM claimed c {opted_out} ORDER BY {key}
    """


async def prepare_session(pg: asyncpg.Connection) -> None:
    # CSV timestamps must be unambiguous UTC for ClickHouse's best_effort parser.
    await pg.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'")
    # Safe here: a mark lost in a server crash only makes the next run load the rows again,
    # which is idempotent; it saves a WAL flush per batch.
    await pg.execute("SET synchronous_commit = off")


async def purge_opted_out(pg: asyncpg.Connection, family: Family) -> int:
    """Delete pending rows of opted-out members: they must never reach ClickHouse."""
    if family.user_column is None:
        return 0
    status = await pg.execute(
        f"""
        DELETE FROM {family.staging_table} t USING opt_outs o
        WHERE t.ch_ingested_at IS NULL AND o.guild_id = t.guild_id
          AND o.user_id = t.{family.user_column}
        """
    )
    return int(status.rsplit(" ", 1)[1])


async def sync_batch(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    family: Family,
    batch_rows: int,
    *,
    fault: FaultHook | None = None,
) -> BatchResult:
    started = time.perf_counter()
    async with pg.transaction():
        buffer = io.BytesIO()
        status = await pg.copy_from_query(
            claim_sql(family, batch_rows), output=buffer, format="csv", null="\\N"
        )
        rows = int(status.rsplit(" ", 1)[1])
        data = buffer.getvalue()
        if fault:
            await fault("claimed", family)
        deduplicated = False
        if rows:
            token = f"herwa:{family.target_table}:{hashlib.sha256(data).hexdigest()}"
            summary = await ch.raw_insert(
                family.target_table,
                family.target_columns,
                insert_block=data,
                fmt="CSV",
                settings={**rollups.CSV_SETTINGS, "insert_deduplication_token": token},
            )
            deduplicated = summary.written_rows == 0
            if fault:
                await fault("inserted", family)
            if family.rollup == "deletions":
                # A deleted message's hour is known only from the message row in ClickHouse.
                buckets = await rollups.affected_buckets_from_batch(ch, family.rollup, data)
                await rollups.mark_dirty(pg, buckets)
        if fault:
            await fault("before_commit", family)
    return BatchResult(family.name, rows, time.perf_counter() - started, deduplicated)
