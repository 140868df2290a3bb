"""Run metrics: Prometheus (pushed to a Pushgateway when configured) and the Postgres run log.

A CronJob pod is gone before Prometheus could scrape it, so the metrics live in a registry of
their own and are pushed at the end of the run; the same figures go into ``etl_runs`` so
dashboards have them without a Pushgateway.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

log = logging.getLogger(__name__)

JOB = "herwa_etl"


@dataclass
class RunStats:
    rows_moved: dict[str, int] = field(default_factory=dict)
    rows_skipped: dict[str, int] = field(default_factory=dict)
    rows_cleaned: dict[str, int] = field(default_factory=dict)
    lag_seconds: dict[str, float] = field(default_factory=dict)
    usage_drained: int = 0
    deletions: int = 0  # requests completed
    deletion_subjects: int = 0  # servers and members whose data was deleted (requests deduped)
    deletions_failed: int = 0  # subjects whose deletion failed (retried by a later run)
    deletions_deferred: int = 0  # subjects left for a later run: the run's share was spent
    # ClickHouse table → rows deleted this run because they passed their server's history window
    rows_expired: dict[str, int] = field(default_factory=dict)


class EtlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "herwa_etl_rows_moved", "Staging rows loaded into ClickHouse", ["table"], registry=r
        )
        self.skipped = Counter(
            "herwa_etl_rows_skipped",
            "Staging rows of opted-out users dropped instead of loaded",
            ["table"],
            registry=r,
        )
        self.cleaned = Counter(
            "herwa_etl_rows_cleaned",
            "Ingested staging rows deleted past retention",
            ["table"],
            registry=r,
        )
        self.batch = Histogram(
            "herwa_etl_batch_duration_seconds",
            "One claim-load-record batch",
            ["table"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.run_duration = Gauge(
            "herwa_etl_run_duration_seconds", "Duration of the last run", registry=r
        )
        self.outcome = Gauge(
            "herwa_etl_run_outcome", "1 for the last run's outcome", ["outcome"], registry=r
        )
        self.last_success = Gauge(
            "herwa_etl_last_success_timestamp_seconds",
            "End of the last run that did not fail",
            registry=r,
        )
        self.lag = Gauge(
            "herwa_etl_ingestion_lag_seconds",
            "Age of the oldest un-ingested staging row (0: none)",
            ["table"],
            registry=r,
        )
        self.usage = Counter(
            "herwa_etl_usage_rows_drained", "Command-usage rows staged from Redis", registry=r
        )
        self.deletions = Counter(
            "herwa_etl_deletion_requests_completed", "Deletion requests carried out", registry=r
        )
        self.deletion_failures = Counter(
            "herwa_etl_deletion_failures",
            "Deletion subjects (a server, or a member of one) whose deletion failed this run",
            registry=r,
        )
        self.deletions_pending = Gauge(
            "herwa_etl_deletion_requests_pending",
            "Deletion requests not yet completed after the run's deletion step",
            registry=r,
        )

    def finish(self, outcome: str, seconds: float, stats: RunStats, end_epoch: float) -> None:
        for name in ("caught_up", "deadline", "failed"):
            self.outcome.labels(name).set(1 if name == outcome else 0)
        self.run_duration.set(seconds)
        if outcome != "failed":
            self.last_success.set(end_epoch)
        for table, lag in stats.lag_seconds.items():
            self.lag.labels(table).set(lag)

    def push(self, url: str | None) -> None:
        if not url:
            return
        try:
            push_to_gateway(url, job=JOB, registry=self.registry, timeout=10)
        except OSError as exc:  # metrics must not turn a good run into a failed one
            log.warning("pushgateway push failed: %s", exc)


async def start_run(pg: asyncpg.Connection) -> int:
    run_id: int = await pg.fetchval(
        "INSERT INTO etl_runs (host) VALUES ($1) RETURNING run_id", socket.gethostname()
    )
    return run_id


async def finish_run(
    pg: asyncpg.Connection,
    run_id: int,
    outcome: str,
    seconds: float,
    stats: RunStats,
    error: str | None = None,
) -> None:
    await pg.execute(
        """
        UPDATE etl_runs SET finished_at = now(), outcome = $2, duration_seconds = $3,
            rows_moved = $4::jsonb, rows_skipped = $5::jsonb, rows_cleaned = $6::jsonb,
            lag_seconds = $7::jsonb, usage_drained = $8, deletions = $9, error = $10
        WHERE run_id = $1
        """,
        run_id,
        outcome,
        seconds,
        json.dumps(stats.rows_moved),
        json.dumps(stats.rows_skipped),
        json.dumps(stats.rows_cleaned),
        json.dumps(stats.lag_seconds),
        stats.usage_drained,
        stats.deletions,
        error,
    )
