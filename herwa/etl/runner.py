"""One bounded ETL run: lock, privacy, usage drain, sync every family, cleanup, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
from opentelemetry import trace
from redis.asyncio import Redis

from herwa import schema, usage
from herwa.config import Transfer
from herwa.etl import cleanup, expiry, local_weeks, lock, low_water, metrics, privacy, rollups
from herwa.etl.families import BY_NAME, FAMILIES
from herwa.etl.low_water import load_cursors
from herwa.etl.sync import (
    BatchResult,
    Claimed,
    FaultHook,
    claim,
    opt_out_horizon,
    prepare_session,
    purge_opted_out,
)
from herwa.staging import STAGING_TABLES, ingestion_lag
from herwa.stores import PullSource, clickhouse_url_client, postgres_connection
from herwa.telemetry import tracer

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)
_tracer = tracer("herwa.etl")


@dataclass(frozen=True)
class RunOptions:
    batch_rows: int = 250_000  # as config.EtlSettings
    deadline_seconds: float = 600.0
    retention_hours: float = 72.0
    pushgateway_url: str | None = None
    redis_prefix: str = "herwa:"
    # Claim batch N+1 on a second connection while batch N goes to ClickHouse (see sync.py).
    pipeline: bool = True
    # At most this share of deadline_seconds goes to deletion requests at the start of a run;
    # the rest are carried out by the next runs (privacy.carry_out_due).
    deletion_share: float = 0.25
    # Delete each server's history past its tier's history_days (etl/expiry.py) after loading.
    expire_history: bool = True
    # How a batch reaches ClickHouse (config.EtlSettings.transfer), and for pull, Postgres as
    # ClickHouse reaches it (default: the run's own DSN).
    transfer: Transfer = "pull"
    pull_postgres_dsn: str | None = field(default=None, repr=False)


@dataclass
class RunResult:
    run_id: int
    outcome: str  # caught_up | deadline | failed
    seconds: float
    stats: metrics.RunStats = field(default_factory=metrics.RunStats)
    error: str | None = None


async def run_once(
    postgres_dsn: str,
    clickhouse_url: str,
    redis: Redis | None,
    options: RunOptions,
    *,
    fault: FaultHook | None = None,
) -> RunResult:
    """Raises :class:`lock.LockHeld` if another run is active; otherwise returns the result."""
    started = time.monotonic()
    with _tracer.start_as_current_span("etl.run") as span:
        pg = await postgres_connection(postgres_dsn)
        try:
            await prepare_session(pg)
            await lock.acquire(pg)
            stores = (postgres_dsn, clickhouse_url)
            result = await _locked_run(pg, redis, options, started, fault, stores)
        finally:
            # Closing the session releases the advisory lock too, even after a failed batch.
            await pg.close()
        span.set_attribute("herwa.etl.run_id", result.run_id)
        span.set_attribute("herwa.etl.outcome", result.outcome)
        span.set_attribute("herwa.etl.rows_moved", sum(result.stats.rows_moved.values()))
        if result.error:
            span.set_status(trace.StatusCode.ERROR, result.error)
        return result


class _RecomputeRounds:
    """Message rollups recomputed beside the sync loop, a round whenever batches have committed.

    Without this the recompute ran after the loop, while the loop's cores idled. Each round
    covers every batch committed before it started (rollups.flush_loaded); the run ends with one
    more recompute after the loop. A round starts once two batches' worth of rows are owed: each
    round redoes the boundary hours and whole UTC days it shares with the next, so a round per
    batch costs more than it overlaps. Once the last message batch is claimed, every batch that
    commits gets its round, so the one after the loop covers the last batch alone (figures:
    benchmarks/README.md).
    """

    def __init__(
        self, postgres_dsn: str, clickhouse_url: str, hook: rollups.Hook | None, min_rows: int
    ) -> None:
        self._dsn, self._url, self._hook = postgres_dsn, clickhouse_url, hook
        self._min_rows = min_rows
        self._wake = asyncio.Event()
        self._stopping = False
        self._owed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._rounds())

    def committed(self, rows: int) -> None:
        self._owed += rows
        if self._owed >= self._min_rows:
            self._owed = 0
            self._wake.set()

    def last_batch_claimed(self) -> None:
        """From now on every committed batch gets a round: rounds of two batches left the last
        two to the end of the run, where nothing runs beside them."""
        self._min_rows = 1
        self.committed(0)

    def check(self) -> None:
        """Raise a round's failure in the sync loop, which then stops like on its own."""
        if self._task is not None and self._task.done():
            self._task.result()

    async def stop(self) -> None:
        """Let the round under way finish (a cancelled one would be redone), start no other."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task

    async def _rounds(self) -> None:
        # A connection and a client of its own: the loop's are busy, and one ClickHouse
        # session runs one query at a time.
        pg = await postgres_connection(self._dsn)
        try:
            ch = await clickhouse_url_client(self._url)
            try:
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if self._stopping:
                        return
                    await rollups.flush_loaded(pg, ch, self._hook)
            finally:
                await ch.close()
        finally:
            await pg.close()


async def _sync_families(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    options: RunOptions,
    stats: metrics.RunStats,
    prom: metrics.EtlMetrics,
    deadline: float,
    fault: FaultHook | None,
    stores: tuple[str, str],
    rounds_hook: rollups.Hook | None,
    horizon: int,
) -> str:
    """Every family to ClickHouse; returns "caught_up" or "deadline".

    Round robin, one batch per family per pass, so a huge backlog in one family cannot starve
    the others until the deadline. Pipelined: while batch N is inserted and committed (a task on
    one connection), batch N+1 is claimed on the other; N+1 is loaded only after N committed,
    and the message rollups are recomputed beside them (:class:`_RecomputeRounds`).
    """
    postgres_dsn, clickhouse_url = stores
    source = None
    if options.transfer == "pull":
        source = PullSource.from_dsn(options.pull_postgres_dsn or postgres_dsn)
        await source.probe(ch, "to pull batches")
    conns = [pg]
    rounds = _RecomputeRounds(postgres_dsn, clickhouse_url, rounds_hook, 2 * options.batch_rows)
    if options.pipeline:
        second = await postgres_connection(postgres_dsn)
        await prepare_session(second)
        conns.append(second)
        rounds.start()

    def record(result: BatchResult) -> None:
        stats.rows_moved[result.family] += result.rows
        prom.rows.labels(result.family).inc(result.rows)
        stats.rows_skipped[result.family] += result.skipped
        prom.skipped.labels(result.family).inc(result.skipped)
        prom.batch.labels(result.family).observe(result.seconds)
        if result.family == "message_events" and result.rows:
            rounds.committed(result.rows)

    inflight: asyncio.Task[BatchResult] | None = None
    inflight_family = ""
    claimed: Claimed | None = None
    turn = 0
    outcome = "caught_up"
    try:
        pending = list((await load_cursors(pg)).values())
        while pending:
            if time.monotonic() >= deadline:
                outcome = "deadline"
                break
            for cursor in list(pending):
                rounds.check()
                claimed = await claim(
                    conns[turn],
                    cursor,
                    options.batch_rows,
                    horizon,
                    source=source,
                    fault=fault,
                )
                if cursor.caught_up:
                    pending.remove(cursor)
                    if cursor.family.name == "message_events":
                        rounds.last_batch_claimed()
                if not claimed.rows and (inflight is None or inflight_family != cursor.family.name):
                    # Nothing for ClickHouse: its record commits now and the connection takes
                    # the next claim, which so overlaps the batch in flight. As a turn of its
                    # own, every other family's empty batch held the first pass's second
                    # message claim back until the first message batch was loaded. Marks are
                    # per family, and this family has no batch in flight.
                    empty, claimed = claimed, None
                    record(await empty.load_and_commit(ch, fault))
                    continue
                turn = (turn + 1) % len(conns)
                if inflight is not None:
                    task, inflight = inflight, None
                    record(await task)
                inflight = asyncio.create_task(claimed.load_and_commit(ch, fault))
                inflight_family = cursor.family.name
                claimed = None
                if len(conns) == 1:  # unpipelined: the next claim needs this connection
                    task, inflight = inflight, None
                    record(await task)
        if inflight is not None:
            task, inflight = inflight, None
            record(await task)
        await rounds.stop()
    except BaseException:
        # A claimed batch not handed over yet is un-claimed; the batch in flight (older, its
        # own transaction) is finished rather than abandoned: its outcome is independent of
        # this failure, and either outcome is exactly-once.
        if claimed is not None:
            await claimed.rollback()
        if inflight is not None:
            with contextlib.suppress(Exception):
                record(await inflight)
        with contextlib.suppress(Exception):
            await rounds.stop()
        raise
    finally:
        for conn in conns[1:]:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.close()
    return outcome


async def _locked_run(
    pg: asyncpg.Connection,
    redis: Redis | None,
    options: RunOptions,
    started: float,
    fault: FaultHook | None,
    stores: tuple[str, str],  # Postgres DSN, ClickHouse URL
) -> RunResult:
    run_id = await metrics.start_run(pg)
    prom = metrics.EtlMetrics()
    stats = metrics.RunStats()
    deadline = started + options.deadline_seconds
    outcome, error = "caught_up", None
    ch: AsyncClient | None = None
    try:
        # Connected inside the recorded run: a ClickHouse that cannot be reached is a failed
        # run in etl_runs, which the operator exports and the chart's alert watches.
        ch = await clickhouse_url_client(stores[1])
        # An image newer than the schema (an upgrade whose migrate Job is still running) fails
        # on record rather than writing into tables it does not know.
        if missing := await schema.pending(*stores):
            raise schema.MigrationError(f"the schema is not current: {', '.join(missing)} pending")
        await low_water.check_counter(pg)
        # Before anything of this run writes local weeks (deletions recompute too).
        await local_weeks.heal(ch)
        await local_weeks.heal_voice(ch)
        # Deletions first, within their share of the deadline, so that requests (however
        # many, however slow or failing) never starve loading. A deferred request lets nothing
        # through: asking for a member's opted them out (the purge below drops their rows), and
        # a server's tombstone stopped its capture (what this run loads goes with the rest).
        budget = min(options.deletion_share * options.deadline_seconds, deadline - time.monotonic())
        with _tracer.start_as_current_span("etl.privacy"):
            deleted = await privacy.carry_out_due(pg, ch, redis, options.redis_prefix, budget)
        stats.deletions = deleted.completed
        stats.deletion_subjects = deleted.subjects
        stats.deletions_failed = deleted.failed
        stats.deletions_deferred = deleted.deferred
        prom.deletions.inc(deleted.completed)
        prom.deletion_failures.inc(deleted.failed)
        prom.deletions_pending.set(await privacy.pending_count(pg))
        if redis is not None:
            with _tracer.start_as_current_span("etl.usage_drain"):
                stats.usage_drained = await usage.drain(redis, options.redis_prefix, pg)
            prom.usage.inc(stats.usage_drained)
        horizon = await opt_out_horizon(pg)
        for family in FAMILIES:
            skipped = await purge_opted_out(pg, family)
            stats.rows_skipped[family.name] = skipped
            prom.skipped.labels(family.name).inc(skipped)
            stats.rows_moved[family.name] = 0
        messages = BY_NAME["message_events"]

        async def after_recompute() -> None:
            if fault is not None:
                await fault("rolled_up", messages)

        with _tracer.start_as_current_span("etl.sync"):
            outcome = await _sync_families(
                pg, ch, options, stats, prom, deadline, fault, stores, after_recompute, horizon
            )
        # Also at the deadline: the loaded rows must show up in the rollups of this run.
        with _tracer.start_as_current_span("etl.rollups"):
            await rollups.flush_loaded(pg, ch, after_recompute)
            await rollups.flush_queue(pg, ch, after_recompute)
            await rollups.flush_voice(pg, ch)
            # After the last recompute, so that none writes a zone being replaced.
            await local_weeks.follow_zones(pg, ch)
        cutoff = datetime.now(UTC) - timedelta(hours=options.retention_hours)
        with _tracer.start_as_current_span("etl.cleanup"):
            stats.rows_cleaned = await cleanup.cleanup(pg, cutoff)
        for table, count in stats.rows_cleaned.items():
            prom.cleaned.labels(table).inc(count)
        # After loading, so that rows loaded this run are expired with the rest; within the
        # same share of the deadline as deletions, and at least one table per run.
        if options.expire_history:
            budget = min(
                options.deletion_share * options.deadline_seconds, deadline - time.monotonic()
            )
            with _tracer.start_as_current_span("etl.history_expiry"):
                expired = await expiry.expire_due(pg, ch, budget, prom.registry)
            stats.rows_expired = {
                table.removeprefix("clickhouse."): n
                for table, n in expired.rows.items()
                if table.startswith("clickhouse.")
            }
        for staged in STAGING_TABLES:
            stats.lag_seconds[staged.name] = await ingestion_lag(pg, staged)
    except Exception as exc:
        outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("etl run failed")
    finally:
        if ch is not None:
            with contextlib.suppress(Exception):
                await ch.close()
    seconds = time.monotonic() - started
    prom.finish(outcome, seconds, stats, time.time())
    try:
        if pg.is_closed():  # the failure took the connection: record through a new one
            pg = await postgres_connection(stores[0])
            try:
                await metrics.finish_run(pg, run_id, outcome, seconds, stats, error)
            finally:
                await pg.close()
        else:
            await metrics.finish_run(pg, run_id, outcome, seconds, stats, error)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        log.warning("could not record the run outcome in etl_runs", exc_info=True)
    prom.push(options.pushgateway_url)
    log.info(
        "etl run finished",
        extra={
            "run_id": run_id,
            "outcome": outcome,
            "seconds": round(seconds, 3),
            "rows": stats.rows_moved,
            "lag": stats.lag_seconds,
            "deletions": stats.deletions,
            "deletions_failed": stats.deletions_failed,
            "deletions_deferred": stats.deletions_deferred,
        },
    )
    return RunResult(run_id, outcome, seconds, stats, error)
