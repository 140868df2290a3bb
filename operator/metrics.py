"""Prometheus metrics of the operator. Labels stay low-cardinality: never a guild id or a name."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator

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
