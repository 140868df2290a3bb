"""Prometheus metrics of the operator. Labels stay low-cardinality: never a guild id or a name."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RECONCILES = Counter(
    "herwa_operator_reconciles_total",
    "GuildSubscription reconciles by trigger (create, update, resume, timer, delete) and outcome "
    "(active, suspended, expired, conflict, invalid, unknown_tier, unavailable, revoked, error)",
    ["trigger", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "herwa_operator_reconcile_duration_seconds",
    "Time to reconcile one GuildSubscription against Postgres and Redis",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DRIFT_REPAIRS = Counter(
    "herwa_operator_drift_repairs_total",
    "Entitlement rows (postgres) or command cache entries (redis) found changed or missing by "
    "the drift timer and rewritten",
    ["store"],
)


class SubscriptionBook(Collector):
    """Last known tier and state per GuildSubscription uid, exported as a gauge at scrape time."""

    def __init__(self, known_tiers: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[str, str]] = {}
        self.known_tiers = frozenset(known_tiers)

    def record(self, uid: str, tier: str | None, state: str) -> None:
        # A typo'd tier in a CR must not mint a new label value.
        label = tier if tier in self.known_tiers else "unknown"
        with self._lock:
            self._states[uid] = (label, state)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._states.pop(uid, None)

    def counts(self) -> Tally[tuple[str, str]]:
        with self._lock:
            return Tally(self._states.values())

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "herwa_operator_subscriptions",
            "GuildSubscriptions known to this operator by tier and state "
            "(active, suspended, expired, conflict, invalid, unknown_tier, unavailable)",
            labels=["tier", "state"],
        )
        for (tier, state), count in sorted(self.counts().items()):
            family.add_metric([tier, state], count)
        yield family


BOOK = SubscriptionBook()
REGISTRY.register(BOOK)


@dataclass(frozen=True)
class EtlState:
    """What the operator last read of the ETL's state from Postgres."""

    backlog_age: dict[str, float]
    last_success: float
    last_outcome: str | None = None
    last_run_rows: dict[str, int] = field(default_factory=dict)
    last_run_seconds: float | None = None
    expiry_completed: float = 0.0
    expiry_rows: dict[str, int] = field(default_factory=dict)


class EtlHealthBook(Collector):
    """The ETL's state as last read from Postgres (herwa.operator.etl_health); nothing at all
    while unknown, so a "no data" rule can tell an unreadable state from a healthy one."""

    OUTCOMES = ("caught_up", "deadline", "failed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: EtlState | None = None

    def record(self, state: EtlState) -> None:
        with self._lock:
            self._state = state

    def forget(self) -> None:
        with self._lock:
            self._state = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            state = self._state
        if state is None:
            return
        age = GaugeMetricFamily(
            "herwa_operator_etl_backlog_age_seconds",
            "Age of the oldest staging row not yet in ClickHouse, per staging table (0: none), "
            "read from Postgres",
            labels=["table"],
        )
        for table, seconds in sorted(state.backlog_age.items()):
            age.add_metric([table], seconds)
        yield age
        yield GaugeMetricFamily(
            "herwa_operator_etl_last_success_timestamp_seconds",
            "End of the newest ETL run that did not fail (etl_runs; 0: none yet)",
            value=state.last_success,
        )
        rows = GaugeMetricFamily(
            "herwa_operator_etl_last_run_rows",
            "Rows the newest finished ETL run loaded into ClickHouse, per staging table (etl_runs)",
            labels=["table"],
        )
        for table, count in sorted(state.last_run_rows.items()):
            rows.add_metric([table], count)
        yield rows
        if state.last_run_seconds is not None:
            yield GaugeMetricFamily(
                "herwa_operator_etl_last_run_duration_seconds",
                "Duration of the newest finished ETL run (etl_runs)",
                value=state.last_run_seconds,
            )
        outcome = GaugeMetricFamily(
            "herwa_operator_etl_last_run_outcome",
            "1 for the outcome of the newest finished ETL run (etl_runs)",
            labels=["outcome"],
        )
        for name in self.OUTCOMES:
            outcome.add_metric([name], 1 if name == state.last_outcome else 0)
        yield outcome
        yield GaugeMetricFamily(
            "herwa_operator_history_expiry_last_complete_timestamp_seconds",
            "End of the last complete history expiry pass (history_expiry; 0: none yet)",
            value=state.expiry_completed,
        )
        expired = GaugeMetricFamily(
            "herwa_operator_history_expiry_rows",
            "Rows the last complete history expiry pass deleted, per store.table (history_expiry)",
            labels=["table"],
        )
        for table, count in sorted(state.expiry_rows.items()):
            expired.add_metric([table], count)
        yield expired


ETL_HEALTH = EtlHealthBook()
REGISTRY.register(ETL_HEALTH)
