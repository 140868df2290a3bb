"""One claim → load → mark batch for one event family, exactly once in effect.

Per batch, inside one Postgres transaction:

1. ``COPY (WITH claimed AS (UPDATE … SET ch_ingested_at = now() WHERE ctid = ANY(ARRAY(SELECT
   ctid … WHERE ch_ingested_at IS NULL ORDER BY <pending index> LIMIT n FOR UPDATE SKIP
   LOCKED))) RETURNING …) SELECT … ORDER BY key) TO STDOUT CSV``: the claim and the mark are one
   statement; Postgres renders the rows as CSV in ClickHouse column order, so no row passes
   through Python objects. The batch's (guild, hour) buckets go to a per-session temp table.
2. The CSV goes to ClickHouse as one insert with an ``insert_deduplication_token`` derived from
   its bytes (the fast path: an identical retry is dropped by the server).
3. The buckets are queued in ``etl_dirty_buckets`` (same transaction).
4. COMMIT makes the mark and the queue durable. Rollups of queued buckets are recomputed after
   the sync loop (rollups.flush) and dequeued only once recomputed.

A crash before 4 rolls the mark back: the next run claims the rows again and loads them again.
That is harmless because every ClickHouse table is a ReplacingMergeTree keyed by the natural id
and every query reads FINAL, and the rollups are recomputed rather than incremented.

Pipelining (runner.py): batch N+1 is claimed on a second connection while batch N is being
inserted into ClickHouse. Step 1 of N+1 only ever overlaps steps 2-4 of N; steps 2-4 run one
batch at a time and in claim order, so every batch still commits after its own insert, and the
crash analysis above holds per batch. The two claims are disjoint because of SKIP LOCKED (N's
rows are locked by N's uncommitted UPDATE until N commits), and step 3 waits for step 4 of the
previous batch so the two transactions never wait on each other's dirty-bucket keys.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
from asyncpg.transaction import Transaction

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
    order = ", ".join(family.pending_order)
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
        # Data-modifying CTEs always run: the batch's buckets are noted in the same statement.
        # They go to a session-local temp table, not straight to etl_dirty_buckets: its unique
        # key would make a pipelined claim wait for the previous batch's commit (see queue_dirty).
        dirty = """,
        dirty AS (
            INSERT INTO pg_temp.etl_batch_buckets (guild_id, hour)
            SELECT DISTINCT guild_id, date_trunc('hour', created_at) FROM claimed
        )"""
    # Why FOR UPDATE SKIP LOCKED although the run lock admits one ETL run at a time (measured:
    # dropping it saves nothing within noise on 1 M rows, see benchmarks/etl_throughput.py):
    # - the pipelined run claims batch N+1 while batch N is still uncommitted; SKIP LOCKED is
    #   what keeps the two claims disjoint instead of making N+1 wait for N;
    # - the bot's member_count_snapshots upsert (… SET ch_ingested_at = NULL) may update a row
    #   between our snapshot and our UPDATE. With the row lock taken in the subquery, READ
    #   COMMITTED re-checks the newest row version (still NULL → claimed, and its newest
    #   values are the ones exported; marked by the UPDATE of that very version, whose ctid the
    #   lock returned). An upsert arriving after the claim waits for our commit and then sets
    #   NULL again, so the newer count is loaded by the next batch. A plain UPDATE … WHERE
    #   ctid = ANY(<unlocked ctids>) would silently skip a concurrently upserted row instead.
    # ctid: the claimed rows are found again by physical address, whatever the key's shape;
    # the row lock pins that address until the UPDATE in the same statement.
    # ORDER BY the pending index's columns: the claim reads the first n entries of the small
    # `_pending` partial index (no sort of the backlog), and a re-claim after a crash takes the
    # same rows, so the re-sent batch has the same bytes and dedup token.
    return f"""
        WITH claimed AS (
            UPDATE {table} SET ch_ingested_at = now()
            WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table} WHERE ch_ingested_at IS NULL ORDER BY {order}
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
    # A 100k-row claim materialises its CTE and sorts it: with the 4 MB default both spill to
    # disk, and the 10-row estimate for the ctid array picks a nested-loop opt-out probe.
    await pg.execute("SET work_mem = '64MB'")
    # The batch's rollup buckets until queue_dirty moves them into etl_dirty_buckets.
    await pg.execute(
        "CREATE TEMP TABLE IF NOT EXISTS etl_batch_buckets (guild_id bigint, hour timestamptz)"
        " ON COMMIT DELETE ROWS"
    )


async def queue_dirty(pg: asyncpg.Connection) -> None:
    """Queue the claimed batch's buckets for the rollup recompute (inside the batch's tx)."""
    await pg.execute(
        "INSERT INTO etl_dirty_buckets (guild_id, hour)"
        " SELECT DISTINCT guild_id, hour FROM pg_temp.etl_batch_buckets ON CONFLICT DO NOTHING"
    )


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


@dataclass
class Claimed:
    """A batch claimed and marked in an open transaction, not yet loaded nor committed."""

    pg: asyncpg.Connection
    tx: Transaction
    family: Family
    rows: int
    data: bytes
    started: float

    async def load_and_commit(self, ch: AsyncClient, fault: FaultHook | None = None) -> BatchResult:
        """Steps 2-4; rolls the transaction back (un-claims the rows) if any of them fails."""
        family = self.family
        try:
            deduplicated = False
            if self.rows:
                token = f"herwa:{family.target_table}:{hashlib.sha256(self.data).hexdigest()}"
                summary = await ch.raw_insert(
                    family.target_table,
                    family.target_columns,
                    insert_block=self.data,
                    fmt="CSV",
                    settings={**rollups.CSV_SETTINGS, "insert_deduplication_token": token},
                )
                deduplicated = summary.written_rows == 0
                if fault:
                    await fault("inserted", family)
                if family.rollup == "messages":
                    await queue_dirty(self.pg)
                elif family.rollup == "deletions":
                    # A deleted message's hour is known only from the message row in ClickHouse.
                    buckets = await rollups.affected_buckets_from_batch(
                        ch, family.rollup, self.data
                    )
                    await rollups.mark_dirty(self.pg, buckets)
            if fault:
                await fault("before_commit", family)
            await self.tx.commit()
        except BaseException:
            await self.rollback()
            raise
        return BatchResult(family.name, self.rows, time.perf_counter() - self.started, deduplicated)

    async def rollback(self) -> None:
        if self.pg.is_closed():
            return  # the server rolled it back with the session
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.tx.rollback()


async def claim(
    pg: asyncpg.Connection,
    family: Family,
    batch_rows: int,
    *,
    fault: FaultHook | None = None,
) -> Claimed:
    """Step 1 in a new transaction on ``pg``, left open for :meth:`Claimed.load_and_commit`."""
    started = time.perf_counter()
    tx = pg.transaction()
    await tx.start()
    try:
        buffer = io.BytesIO()
        status = await pg.copy_from_query(
            claim_sql(family, batch_rows), output=buffer, format="csv", null="\\N"
        )
        claimed = Claimed(pg, tx, family, int(status.rsplit(" ", 1)[1]), buffer.getvalue(), started)
        if fault:
            await fault("claimed", family)
    except BaseException:
        if not pg.is_closed():
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await tx.rollback()
        raise
    return claimed


async def sync_batch(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    family: Family,
    batch_rows: int,
    *,
    fault: FaultHook | None = None,
) -> BatchResult:
    """One batch, unpipelined: claim, load, commit."""
    claimed = await claim(pg, family, batch_rows, fault=fault)
    return await claimed.load_and_commit(ch, fault)
