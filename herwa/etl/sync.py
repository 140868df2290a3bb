"""One claim → load → record batch for one event family, exactly once in effect.

Rows are claimed in ``staged_xid`` order (the id of the transaction that staged them, postgres
migration 0006) from the family's :class:`Cursor`. Per batch:

1. Bound the batch: from the cursor up to the (n+1)-th row's staged_xid, never past the xmin of
   a snapshot taken now (every transaction below it has ended, so no row below the bound can
   still appear: the hole of watermarks on serial ids does not open). A batch is always whole
   staging transactions; one larger than n rows becomes one larger batch. Opted-out members'
   rows in the bound that the run-start purge could not see are deleted (_purge_unseen).
2. Render the batch: ``SELECT <ClickHouse columns> WHERE staged_xid in the bound`` (claim_sql),
   Postgres's text output in ClickHouse column order, so no row passes through Python objects.
   Nothing is written to the rows: the batch record (step 4) says they are loaded. Message and
   voice session rows carry the batch's upper bound as ``loaded_batch``. Two transfers:

   - **pull** (the default): ClickHouse runs that SELECT itself through its postgresql() table
     function, inside its insert (step 3), in a session of its own. So the claim's transaction
     commits after step 1 (that session must see the purge), holding only the batch's row
     count; the batch record takes a transaction of its own.
   - **push**, for a ClickHouse that cannot reach Postgres: ``COPY (SELECT …) TO STDOUT`` in the
     claim's transaction, left open, and the bytes go to ClickHouse (its TabSeparated).
3. The batch goes to ClickHouse as one insert with an ``insert_deduplication_token`` derived from
   the bounds and the row count (push: and a crc of the bytes), the fast path: an identical
   retry is dropped by the server.
4. The batch is recorded in ``etl_low_water``: its bounds, row count and token; its upper bound
   is the family's new low-water mark, below which every row is loaded. A batch of message
   deletions queues its rollup buckets in ``etl_dirty_buckets``.
5. COMMIT makes the record durable. The message rollups are recomputed for every batch at or
   below the committed low-water mark (rollups.py), beside the sync loop.

A crash before 5 leaves no record: the rows are still pending (above the mark), and the next
run claims and loads them again. That is harmless because every ClickHouse table is a
ReplacingMergeTree keyed by the natural id and every query reads FINAL, and the rollups are
recomputed rather than incremented. (A purge committed by a pull's claim is never undone: those
rows must never be loaded anyway.)

Why the bound's rows are stable without a row lock: they were staged by transactions that have
all ended, and the ETL is their only remover besides cleanup and privacy (same run, same lock).
The one other writer is the member-count upsert, which gives the row a new staged_xid (a
trigger, migration 0016): committed before the rows are read, the row has left the bound for a
later batch; committed after, this batch loads the earlier count and a later batch the new one
(the newer taken_at wins in ClickHouse); rolled back, the row is loaded as it was.

Pipelining (runner.py): batch N+1 is claimed on a second connection while batch N is being
inserted into ClickHouse. Steps 1-2 of N+1 only ever overlap steps 3-5 of N; steps 3-5 run one
batch at a time and in claim order, so every batch still commits after its own insert, the
low-water mark only moves forward, and the crash analysis above holds per batch. The two claims
are disjoint because their staged_xid bounds are (the cursor moves at claim time).
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
from asyncpg.transaction import Transaction

from herwa.etl import rollups
from herwa.etl.families import INSERT_SETTINGS, WIRE_FORMAT, Family
from herwa.etl.low_water import Cursor, low_water, record_batch
from herwa.stores import PULL_SETTINGS, PullSource, rows_affected

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# Test seam: called at each named step; raising there simulates a crash at that step.
FaultHook = Callable[[str, Family], Awaitable[None]]
FAULT_POINTS = ("claimed", "inserted", "before_commit", "rolled_up")


@dataclass(frozen=True)
class BatchResult:
    family: str
    rows: int  # rows claimed (pull: counted at claim time), loaded into ClickHouse, recorded
    skipped: int  # opted-out members' rows deleted instead (_purge_unseen)
    seconds: float


async def _bound(pg: asyncpg.Connection, cursor: Cursor, batch_rows: int) -> tuple[int, bool]:
    """Step 1: the exclusive staged_xid bound of the next batch, and whether it is the last."""
    table = cursor.family.staging_table
    # Two index-only probes, the first row and the (n+1)-th: counting and casting the n rows in
    # between costs several times as much. Only the results are cast to bigint
    # (xid8 compares fine but has no min/max aggregates before PostgreSQL 15).
    ahead = (
        f"SELECT staged_xid FROM {table} WHERE staged_xid >= '{int(cursor.next_xid)}'::xid8"
        " AND staged_xid < (SELECT xmin FROM snap) ORDER BY staged_xid"
    )
    (row,) = await pg.fetch(
        f"""
        WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
        SELECT (SELECT xmin FROM snap)::text::bigint AS xmin,
               ({ahead} LIMIT 1)::text::bigint AS first,
               ({ahead} OFFSET {int(batch_rows)} LIMIT 1)::text::bigint AS last
        """
    )
    if row["last"] is None:  # at most n rows left below the snapshot bound
        return max(int(row["xmin"]), cursor.next_xid), True
    first, last = int(row["first"]), int(row["last"])
    # The (n+1)-th row's transaction starts the next batch, unless it is the first one too.
    return (last if last > first else last + 1), False


def rendered_columns(family: Family, upper: int) -> str:
    """The batch's ClickHouse columns as Postgres computes them (``upper``: the batch's bound)."""
    rendered = [f"{expr} AS {name}" for name, expr in family.columns]
    if family.batch_column is not None:
        rendered.append(f"{int(upper)}::bigint AS {family.batch_column}")
    return ", ".join(rendered)


def _in_bounds(lower: int, upper: int) -> str:
    return f"staged_xid >= '{int(lower)}'::xid8 AND staged_xid < '{int(upper)}'::xid8"


def claim_sql(family: Family, lower: int, upper: int, *, ordered: bool = False) -> str:
    # Nothing but select and render: opted-out members' rows are purged before it
    # (_purge_unseen), and the message rollups find their buckets from loaded_batch.
    # A re-claim after a crash usually has the same bounds (not when the crashed batch ended at
    # the snapshot bound, which has moved since) and finds the same rows: ClickHouse recognises
    # the dedup token. Otherwise FINAL hides the duplicates, which carry the same version.
    # ``ordered``: in the same order whatever plan Postgres picks (a row's ctid is stable: only
    # the member-count upsert moves one, out of the bounds), for a pull of several insert blocks
    # (_ONE_INSERT_BLOCK): each block's dedup id derives from the token and its place, so a retry
    # must cut the same blocks for ClickHouse to drop exactly those a crashed attempt stored.
    order = " ORDER BY staged_xid, ctid" if ordered else ""
    return f"""
        SELECT {rendered_columns(family, upper)} FROM {family.staging_table}
        WHERE {_in_bounds(lower, upper)}{order}
    """


async def prepare_session(pg: asyncpg.Connection) -> None:
    # Values are rendered as ClickHouse parses them whatever the server's defaults: ISO
    # timestamps, floats with every digit that round-trips.
    await pg.execute("SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1")
    # Safe here: a batch record lost in a server crash only makes the next run load the rows
    # again, which is idempotent; it saves a WAL flush per batch.
    await pg.execute("SET synchronous_commit = off")


async def opt_out_horizon(pg: asyncpg.Connection) -> int:
    """Taken just before the run-start purges: the xmin of a snapshot.

    Every transaction below it had ended, so those purges saw every opt-out and every staged row
    of such transactions; a claim re-checks only what lies at or above it (_purge_unseen).
    """
    return int(await pg.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))


async def purge_opted_out(pg: asyncpg.Connection, family: Family) -> int:
    """Delete pending rows of opted-out members: they must never reach ClickHouse."""
    if family.user_column is None:
        return 0
    return await _delete_opted_out(pg, family, await low_water(pg, family))


async def _purge_unseen(
    pg: asyncpg.Connection, family: Family, lower: int, upper: int, horizon: int
) -> int:
    """In a claim's transaction: opted-out members' rows of [lower, upper) the run-start purge
    could not see — rows staged at or above ``horizon``, and rows of members who opted out at
    or above it. Usually there are neither, and this costs one index probe.

    (The bot never stages an opted-out member's rows, but a pod of an older release may, and
    a member may opt out while rows staged before are waiting.)
    """
    if family.user_column is None:
        return 0
    deleted = 0
    if upper > horizon:
        deleted += await _delete_opted_out(pg, family, max(lower, horizon), upper)
    if await pg.fetchval(
        "SELECT EXISTS (SELECT 1 FROM opt_outs WHERE opted_out_xid >= $1::text::xid8)",
        str(horizon),
    ):
        deleted += await _delete_opted_out(pg, family, lower, upper, opted_out_since=horizon)
    return deleted


async def _delete_opted_out(
    pg: asyncpg.Connection,
    family: Family,
    lower: int,
    upper: int | None = None,
    *,
    opted_out_since: int | None = None,
) -> int:
    """Delete pending rows of opted-out members staged in [lower, upper) (no upper bound if
    None), of opt-outs made at or above ``opted_out_since`` only, if given.

    ``lower`` is at or above the family's low-water mark, so every row in the range is pending.
    """
    where = [
        f"o.guild_id = t.guild_id AND o.user_id = t.{family.user_column}",
        f"t.staged_xid >= '{int(lower)}'::xid8",
    ]
    if upper is not None:
        where.append(f"t.staged_xid < '{int(upper)}'::xid8")
    if opted_out_since is not None:
        where.append(f"o.opted_out_xid >= '{int(opted_out_since)}'::xid8")
    status = await pg.execute(
        f"DELETE FROM {family.staging_table} t USING opt_outs o WHERE {' AND '.join(where)}"
    )
    return rows_affected(status)


# A pulled batch of up to this many rows is inserted as one block (ClickHouse squashes the rows
# it reads up to these bounds; rows here are far below 1 KiB), so its order does not matter to
# the dedup token; a larger one (a single huge staging transaction) is read in a fixed order.
# Ordering every batch cost Postgres ~0.3 CPU-s per 1 M rows (an incremental sort).
_ONE_INSERT_BLOCK_ROWS = 1_000_000
_ONE_INSERT_BLOCK = {
    "min_insert_block_size_rows": _ONE_INSERT_BLOCK_ROWS,
    "min_insert_block_size_bytes": 1 << 30,
}


@dataclass
class Claimed:
    """A claimed batch, not yet loaded nor recorded.

    Push (no ``source``): its rows are in ``data`` and its transaction is still open. Pull:
    ClickHouse reads them from ``source``; the claim's transaction committed at once (ClickHouse
    reads in a session of its own, which must see the purge of opted-out members' rows), so the
    batch record takes a transaction of its own.
    """

    pg: asyncpg.Connection
    tx: Transaction | None  # open (push), or None: committed at claim time (pull)
    source: PullSource | None
    family: Family
    rows: int
    skipped: int
    data: bytes
    started: float
    bounds: tuple[int, int]  # staged_xid >= first, < second: the low-water mark after commit

    async def load_and_commit(self, ch: AsyncClient, fault: FaultHook | None = None) -> BatchResult:
        """Steps 3-5; rolls the transaction back (un-claims the rows) if any of them fails."""
        family = self.family
        tx = self.tx
        try:
            token: str | None = None
            if self.rows:
                token = await self._insert(ch)
                if fault:
                    await fault("inserted", family)
            if tx is None:
                tx = self.pg.transaction()
                await tx.start()
            if self.rows and family.rollup == "deletions":
                # A deleted message's hour is known only from the message row in ClickHouse.
                batch = self._as_loaded()
                buckets = await rollups.affected_buckets(ch, family.rollup, batch)
                await rollups.mark_dirty(self.pg, buckets)
            await record_batch(self.pg, family, self.bounds, self.rows, token)
            if fault:
                await fault("before_commit", family)
            await tx.commit()
        except BaseException:
            await _rollback(self.pg, tx)
            raise
        seconds = time.perf_counter() - self.started
        return BatchResult(family.name, self.rows, self.skipped, seconds)

    async def _insert(self, ch: AsyncClient) -> str:
        """Step 3: the rows into ClickHouse, under a dedup token; returns the token."""
        family, source = self.family, self.source
        lower, upper = self.bounds
        # The same bounds always hold the same rows (their transactions had ended), and a
        # re-claim renders them in the same order. A row may only leave the bounds in between
        # (deleted, or re-staged by the member-count upsert): pushed bytes carry a crc against
        # that (~8x cheaper than sha256 on 10 MB); a pulled batch is known by its row count.
        token = f"herwa:{family.target_table}:{lower}-{upper}:{self.rows}"
        settings: dict[str, object] = {**INSERT_SETTINGS}
        if source is None:
            token = f"{token}:{zlib.crc32(self.data):08x}"
            settings["insert_deduplication_token"] = token
            await ch.raw_insert(
                family.target_table,
                family.target_columns,
                insert_block=self.data,
                fmt=WIRE_FORMAT,
                settings=settings,
            )
            return token
        settings.update(PULL_SETTINGS)
        settings.update(_ONE_INSERT_BLOCK, insert_deduplication_token=token)
        ordered = self.rows > _ONE_INSERT_BLOCK_ROWS
        select = source.select(claim_sql(family, lower, upper, ordered=ordered))
        columns = ", ".join(family.target_columns)
        with source.reaching(f"to pull a batch of {family.name}"):
            await ch.command(
                f"INSERT INTO {family.target_table} ({columns}) {select}", settings=settings
            )
        return token

    def _as_loaded(self) -> bytes | rollups.PulledBatch:
        if self.source is None:
            return self.data
        return rollups.PulledBatch(self.source.select(claim_sql(self.family, *self.bounds)))

    async def rollback(self) -> None:
        await _rollback(self.pg, self.tx)


async def _rollback(pg: asyncpg.Connection, tx: Transaction | None) -> None:
    if tx is None or pg.is_closed():
        return  # nothing open, or the server rolled it back with the session
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await tx.rollback()


async def claim(
    pg: asyncpg.Connection,
    cursor: Cursor,
    batch_rows: int,
    horizon: int,
    *,
    source: PullSource | None = None,
    fault: FaultHook | None = None,
) -> Claimed:
    """Steps 1-2 in a new transaction on ``pg``: left open for :meth:`Claimed.load_and_commit`
    (push), or committed at once, the rows counted but not read, when ClickHouse is to pull
    them from ``source``.

    ``horizon``: :func:`opt_out_horizon` from before this run's :func:`purge_opted_out`.

    Moves the cursor past the batch at once, so the next claim may start before this one
    commits.
    """
    started = time.perf_counter()
    family = cursor.family
    tx = pg.transaction()
    await tx.start()
    try:
        upper, cursor.caught_up = await _bound(pg, cursor, batch_rows)
        skipped = await _purge_unseen(pg, family, cursor.next_xid, upper, horizon)
        bounds = (cursor.next_xid, upper)
        data = b""
        if source is not None:
            rows = await pg.fetchval(
                f"SELECT count(*) FROM {family.staging_table} WHERE {_in_bounds(*bounds)}"
            )
            await tx.commit()
            claimed = Claimed(pg, None, source, family, rows, skipped, data, started, bounds)
        else:
            parts: list[bytes] = []

            async def collect(chunk: bytes) -> None:
                # A coroutine sink: with a file object asyncpg hands every chunk to a thread.
                parts.append(chunk)

            status = await pg.copy_from_query(
                claim_sql(family, *bounds), output=collect, format="text"
            )
            rows = rows_affected(status)
            data = b"".join(parts)
            claimed = Claimed(pg, tx, None, family, rows, skipped, data, started, bounds)
        cursor.next_xid = upper
        if fault:
            await fault("claimed", family)
    except BaseException:
        await _rollback(pg, tx)
        raise
    return claimed
