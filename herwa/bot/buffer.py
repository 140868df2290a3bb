"""The in-process row buffer and its flush to Postgres.

- ``add`` is synchronous and never drops a row: gateway parsers call it and return.
- A flush starts when ``flush_max_rows`` rows are waiting or ``flush_interval`` has passed since
  the oldest one, whichever comes first. It takes *everything* waiting (so the per-shard gateway
  sequence captured with it is a true "everything up to here is in this batch" mark), COPYs each
  table into a temporary table and merges with ``INSERT … ON CONFLICT DO NOTHING`` on the natural
  key, all in one transaction: a retried batch can never duplicate a row.
- On a database error the batch stays in memory and is retried with exponential backoff (capped)
  until it commits; rows arriving meanwhile keep accumulating behind it.
- A row Postgres refuses (a data or constraint error: retrying it can never succeed) must not
  hold the rest back: the batch is bisected, table by table, in savepoints of the batch's one
  transaction until each refused row stands alone; that row goes to ``dead_letter_rows``
  (postgres migration 0008) with the error and is counted
  (``herwa_bot_dead_letter_rows_total{table}``), every other row commits, and the batch's gateway
  marks move on with them. Capture validates every field so this is the
  last line, not the usual path.
- Memory is bounded: once ``capacity`` rows are held, :meth:`wait_for_room` blocks the shards'
  websocket readers (back-pressure: Discord buffers, and the gateway replays on RESUME) instead
  of growing without limit. The overshoot is at most one gateway event's rows per shard.
- ``in_commit`` runs first inside the batch's transaction with the batch's extras and gateway
  marks, so the shards' state (marks, open voice sessions, member counts) commits together with
  the rows it describes; it may drop rows a fenced shard must not stage. After the commit,
  ``after_commit`` gets the batch for whatever must follow it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from herwa import staging
from herwa.bot import metrics
from herwa.stores import rows_affected
from herwa.telemetry import tracer

log = logging.getLogger(__name__)
_tracer = tracer("herwa.bot.buffer")

Row = tuple[Any, ...]
# A connection, or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy

# table -> columns, in the order capture builds the tuples.
TABLES: dict[str, tuple[str, ...]] = {t.name: t.columns for t in staging.BUFFERED}

# Every series exists from the start, so dashboards and alerts see 0 rather than nothing.
for _table in TABLES:
    metrics.ROWS_FLUSHED.labels(_table)
    metrics.ROWS_DROPPED.labels(_table)
    metrics.DEAD_LETTER_ROWS.labels(_table)


# The member a row is about, in the tables that have one: an opted-out member's rows are never
# staged ("nothing new about you is recorded"). The check runs in the merge, so every event that
# happened after the opt-out committed is dropped — such an event is flushed by a statement that
# starts after it, and so sees the opt-out.
_MEMBER_COLUMN = {t.name: t.member_column for t in staging.BUFFERED if t.member_column}


def _merge_sql(table: str, columns: tuple[str, ...]) -> str:
    cols = ", ".join(columns)
    opted_out = ""
    if member := _MEMBER_COLUMN.get(table):
        opted_out = (
            " WHERE NOT EXISTS (SELECT 1 FROM opt_outs o"  # noqa: S608
            f" WHERE o.guild_id = b.guild_id AND o.user_id = b.{member})"
        )
    # Table and column names are the constants above, never input.
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _herwa_{table} b{opted_out} "  # noqa: S608
        "ON CONFLICT DO NOTHING"
    )


def refused(exc: BaseException) -> bool:
    """The rows themselves are refused, so retrying them can never succeed: SQLSTATE class 22
    (data exception: NUL byte, out of range) or 23 (constraint), or a value the driver cannot
    encode for its column (a string for an integer, an int out of range, a lone surrogate).
    Anything else (a lost connection, a server shutting down) is an outage: retry."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in ("22", "23")
    return isinstance(exc, asyncpg.DataError | ValueError | TypeError | OverflowError)


_BIGINT = 2**63


def _storable(value: Any) -> Any:
    """A value as jsonb can hold it: JSON scalars when faithful, else the escaped repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and -_BIGINT <= value < _BIGINT:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and "\x00" not in value:
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
    return ascii(value)


def _bigint(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and -_BIGINT <= value < _BIGINT
    return value if ok else None


async def dead_letter(
    conn: Conn, table: str, columns: tuple[str, ...], row: Row, exc: BaseException
) -> None:
    """Set aside one row Postgres refused: stored with the error, counted, logged."""
    values = dict(zip(columns, row, strict=False))
    if len(row) != len(columns):
        values["_row"] = row
    member = _MEMBER_COLUMN.get(table, "user_id")
    await conn.execute(
        "INSERT INTO dead_letter_rows (table_name, row, reason, sqlstate, guild_id, user_id) "
        "VALUES ($1, $2::jsonb, $3, $4, $5, $6)",
        table,
        json.dumps({c: _storable(v) for c, v in values.items()}),
        ascii(f"{type(exc).__name__}: {exc}")[:2000],
        getattr(exc, "sqlstate", None),
        _bigint(values.get("guild_id")),
        _bigint(values.get(member)),
    )
    metrics.DEAD_LETTER_ROWS.labels(table).inc()
    log.error(
        "Postgres refused a %s row; stored in dead_letter_rows: %s: %s",
        table,
        type(exc).__name__,
        ascii(str(exc))[:500],
    )


_TEMP_DDL = "".join(
    f"CREATE TEMP TABLE IF NOT EXISTS _herwa_{t} "
    f"(LIKE {t} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
    for t in TABLES
)
_MERGE = {t: _merge_sql(t, c) for t, c in TABLES.items()}


@dataclass
class Batch:
    rows: dict[str, list[Row]]
    extras: list[Any]
    marks: Any
    count: int
    committed: bool = False  # Postgres part done; only after_commit is left to retry
    inserted: dict[str, int] = field(default_factory=dict)


async def _merge(conn: Conn, table: str, rows: list[Row], inserted: dict[str, int]) -> None:
    """COPY ``rows`` into ``table``'s temporary table and merge them, in a savepoint of the
    caller's transaction (so a refused part rolls back alone)."""
    async with conn.transaction():
        await conn.execute(f"TRUNCATE _herwa_{table}")
        await conn.copy_records_to_table(f"_herwa_{table}", records=rows, columns=TABLES[table])
        status = await conn.execute(_MERGE[table])
    inserted[table] = inserted.get(table, 0) + rows_affected(status)


MarkProvider = Callable[[], Any]
AfterCommit = Callable[[Batch], Awaitable[None]]
InCommit = Callable[[Any, Batch], Awaitable[None]]


async def _no_after_commit(batch: Batch) -> None:
    return None


class FlushBuffer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float = 1.0,
        max_rows: int = 5000,
        capacity: int = 200_000,
        after_commit: AfterCommit = _no_after_commit,
        marks: MarkProvider | None = None,
        backoff_max: float = 5.0,
        in_commit: InCommit | None = None,
    ) -> None:
        self._pool = pool
        self.interval = interval
        self.max_rows = max_rows
        self.capacity = capacity
        self._after_commit = after_commit
        self._in_commit = in_commit
        self._marks = marks
        self._backoff_max = backoff_max
        self._live: dict[str, list[Row]] = {t: [] for t in TABLES}
        self._extras: list[Any] = []
        self._live_count = 0
        self._oldest: float | None = None
        self._pending: Batch | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._last_marks: Any = None
        self.last_success = time.monotonic()
        self.failing_since: float | None = None
        self.flushes = 0
        metrics.BUFFER_CAPACITY.set(capacity)

    # -- producers ------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._live_count + (self._pending.count if self._pending else 0)

    def _unflushed(self) -> dict[str, int]:
        counts = {table: len(rows) for table, rows in self._live.items()}
        if self._pending is not None:
            for table, rows in self._pending.rows.items():
                counts[table] += len(rows)
        return {table: count for table, count in counts.items() if count}

    def add(self, table: str, row: Row) -> None:
        self._live[table].append(row)
        self._added(1)

    def add_many(self, table: str, rows: list[Row]) -> None:
        if rows:
            self._live[table].extend(rows)
            self._added(len(rows))

    def add_extra(self, extra: Any) -> None:
        """Something ``after_commit`` applies once the rows before it are committed."""
        self._extras.append(extra)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _added(self, n: int) -> None:
        self._live_count += n
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self._live_count >= self.max_rows:
            self._wake.set()
        if self.depth >= self.capacity:
            self._room.clear()

    def has_room(self) -> bool:
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        if self._room.is_set():
            return
        started = time.monotonic()
        await self._room.wait()
        metrics.BACKPRESSURE_SECONDS.inc(time.monotonic() - started)

    def closing(self) -> bool:
        return self._closing

    # -- flusher --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="herwa-flusher")

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            if self._pending is None:
                await self._wait_due()
                if self.closing():
                    break
            ok = await self._flush_once()
            if ok:
                backoff = 0.05
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)

    async def _wait_due(self) -> None:
        while not self._closing:
            if self._live_count >= self.max_rows:
                return
            if self._oldest is not None:
                left = self._oldest + self.interval - time.monotonic()
                if left <= 0:
                    return
            else:
                left = self.interval
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                if self._oldest is not None or self._marks_dirty():
                    return

    def _marks_dirty(self) -> bool:
        return self._marks is not None and self._marks() != self._last_marks

    def _take(self) -> Batch:
        rows = self._live
        self._live = {t: [] for t in TABLES}
        extras, self._extras = self._extras, []
        count, self._live_count = self._live_count, 0
        self._oldest = None
        marks = self._marks() if self._marks is not None else None
        return Batch({t: r for t, r in rows.items() if r}, extras, marks, count)

    async def _flush_once(self) -> bool:
        """Take (or retry) one batch; True when it is fully applied."""
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if self._pending is None:
            self._pending = self._take()
        batch = self._pending
        try:
            with _tracer.start_as_current_span("bot.flush") as span:
                span.set_attribute("herwa.rows", batch.count)
                if not batch.committed:
                    started = time.perf_counter()
                    try:
                        await self._write(batch)
                    except Exception as exc:
                        self._failed("postgres", exc)
                        span.record_exception(exc)
                        return False
                    metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
                    batch.committed = True
                    for table, rows in batch.rows.items():
                        metrics.ROWS_FLUSHED.labels(table).inc(len(rows))
                        metrics.ROWS_DUPLICATE.labels(table).inc(
                            len(rows) - batch.inserted.get(table, 0)
                        )
                try:
                    await self._after_commit(batch)
                except Exception as exc:
                    self._failed("redis", exc)
                    span.record_exception(exc)
                    return False
            self._last_marks = batch.marks
            self._pending = None
            self.flushes += 1
            self.last_success = time.monotonic()
            self.failing_since = None
            if self.depth < self.capacity:
                self._room.set()
            return True
        finally:
            metrics.BUFFER_DEPTH.set(self.depth)

    def _failed(self, stage: str, exc: Exception) -> None:
        metrics.FLUSH_FAILURES.labels(stage).inc()
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        log.warning(
            "flush failed (%s), keeping %d rows for retry: %s: %s",
            stage,
            self.depth,
            type(exc).__name__,
            exc,
        )

    async def _write(self, batch: Batch) -> None:
        if not batch.rows and (self._in_commit is None or not (batch.extras or batch.marks)):
            return
        inserted: dict[str, int] = {}
        refused_rows: list[tuple[str, Row]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            # The shards' marks and state commit together with exactly the rows they cover, a
            # refused row's dead letter included; an outage rolls all of it back for a retry.
            if self._in_commit is not None:
                await self._in_commit(conn, batch)
            if batch.rows:
                await conn.execute(_TEMP_DDL)
            for table, rows in batch.rows.items():
                await self._merge_or_bisect(conn, table, rows, inserted, refused_rows)
        batch.inserted = inserted
        for table, row in refused_rows:  # out of the batch for good, now that it committed
            batch.rows[table] = [r for r in batch.rows[table] if r is not row]
            batch.count -= 1

    async def _merge_or_bisect(
        self,
        conn: Conn,
        table: str,
        rows: list[Row],
        inserted: dict[str, int],
        refused_rows: list[tuple[str, Row]],
    ) -> None:
        """Merges ``rows``; a part Postgres refuses is halved until each refused row stands
        alone and goes to the dead letters, so that every other row commits with the batch."""
        if not rows:
            return
        try:
            await _merge(conn, table, rows, inserted)
            return
        except Exception as exc:
            if not refused(exc):
                raise
            error = exc
        if len(rows) == 1:
            await dead_letter(conn, table, TABLES[table], rows[0], error)
            refused_rows.append((table, rows[0]))
            return
        half = len(rows) // 2
        await self._merge_or_bisect(conn, table, rows[:half], inserted, refused_rows)
        await self._merge_or_bisect(conn, table, rows[half:], inserted, refused_rows)

    # -- shutdown / sync ------------------------------------------------------------------
    async def flush(self, timeout: float | None = None) -> bool:
        """Flush everything added so far (retrying errors) within ``timeout``; True if done."""

        async def _drain() -> None:
            backoff = 0.05
            async with self._lock:
                while True:
                    retrying = self._pending is not None
                    if await self._flush_locked():
                        if not retrying:
                            return  # the batch taken just now held everything added before
                        backoff = 0.05
                    else:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, self._backoff_max)

        try:
            await asyncio.wait_for(_drain(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Stop the flusher after flushing everything; False if rows were left unflushed."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        done = await self.flush(timeout)
        if not done:
            log.error("shutdown grace exceeded with %d rows unflushed", self.depth)
            for table, count in self._unflushed().items():
                metrics.ROWS_DROPPED.labels(table).inc(count)
        return done
