"""Prometheus metrics of the bot pod: ``herwa_bot_<what>_<unit>``.

Labels stay low-cardinality: shard, event type, table, reason — never guild or user ids.
Gateway events are counted in plain ints on the hot path and exported by a collector, which
costs a dict increment per event instead of a labelled-counter lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

GATEWAY_EVENTS: Counter[tuple[str, str]] = Counter()  # (shard, type) -> count


class _GatewayCollector(Collector):
    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "herwa_bot_gateway_events", "Gateway dispatches received", labels=["shard", "type"]
        )
        for (shard, kind), value in list(GATEWAY_EVENTS.items()):
            family.add_metric([shard, kind], value)
        yield family


REGISTRY.register(_GatewayCollector())

SHARD_LATENCY = Gauge(
    "herwa_bot_shard_latency_seconds", "Heartbeat round trip of each owned shard", ["shard"]
)
SHARD_STATE = Gauge(
    "herwa_bot_shard_state",
    "1 for the state each owned shard is in (connecting, connected, resuming, stopping)",
    ["shard", "state"],
)
GATEWAY_SESSIONS = PromCounter(
    "herwa_bot_gateway_sessions",
    "Gateway sessions each shard opened: kind=identify (a new session, READY; events since the "
    "last committed mark are lost to all but backfill) or resume (RESUMED; Discord replayed them)",
    ["shard", "kind"],
)
SHARDS_OWNED = Gauge("herwa_bot_shards_owned", "Shards this pod holds the lease of")
MEMBERS_LIVE = Gauge("herwa_bot_members_live", "Live bot pods in the Redis membership")
BUFFER_DEPTH = Gauge("herwa_bot_buffer_depth_rows", "Rows waiting to be flushed to Postgres")
BUFFER_CAPACITY = Gauge(
    "herwa_bot_buffer_capacity_rows", "Rows the buffer holds before it pushes back"
)
ROWS_FLUSHED = PromCounter(
    "herwa_bot_rows_flushed", "Rows committed to Postgres (new or already there)", ["table"]
)
ROWS_DUPLICATE = PromCounter(
    "herwa_bot_rows_duplicate", "Flushed rows that were already in Postgres", ["table"]
)
ROWS_DROPPED = PromCounter("herwa_bot_rows_dropped", "Rows given up on; must stay 0", ["table"])
ROWS_FENCED = PromCounter(
    "herwa_bot_rows_fenced",
    "Receive-time-keyed rows left to a shard's newer owner (it receives them again on RESUME)",
    ["table"],
)
FLUSH_SECONDS = Histogram(
    "herwa_bot_flush_duration_seconds",
    "One flush: COPY, merge and commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FLUSH_FAILURES = PromCounter(
    "herwa_bot_flush_failures", "Flushes that failed and will be retried", ["stage"]
)
BACKPRESSURE_SECONDS = PromCounter(
    "herwa_bot_backpressure_seconds", "Time shards spent not reading because the buffer was full"
)
BACKFILL_MESSAGES = PromCounter("herwa_bot_backfill_messages", "Messages read by backfill")
VOICE_OPEN = Gauge("herwa_bot_voice_sessions_open", "Open voice sessions in owned guilds")
VOICE_CLOSED = PromCounter("herwa_bot_voice_sessions_closed", "Closed voice sessions", ["reason"])
SNAPSHOTS = PromCounter("herwa_bot_member_snapshots", "Member-count snapshots upserted")
PAYLOAD_REJECTIONS = PromCounter(
    "herwa_bot_payload_rejections",
    "Gateway payloads (or fields of one) capture could not read: skipped, or the field recorded "
    "as unknown / NULL / cleaned",
    ["event", "reason"],
)
DEAD_LETTER_ROWS = PromCounter(
    "herwa_bot_dead_letter_rows",
    "Rows Postgres refused, set aside in dead_letter_rows so the rest of their batch commits",
    ["table"],
)
FLEET_ROLE = Gauge(
    "herwa_bot_fleet_role",
    "1 for this pod's part while the shard count changes: recording, standby (connected, "
    "waiting for the cut-over), retiring (handing over), idle (its shard count is neither "
    "recording nor the target) or waiting (not enough session starts left for the new fleet)",
    ["role"],
)
RESHARD_EVENTS = PromCounter(
    "herwa_bot_reshard_events",
    "Events a standby fleet received before its cut-over: outcome=recorded (after the previous "
    "fleet's anchor, or keyed by Discord's ids), skipped (the previous fleet recorded them) or "
    "trimmed (held longer than HERWA_BOT_RESHARD_HOLD_SECONDS before the cut-over began: the "
    "previous fleet recorded them)",
    ["outcome"],
)
RESHARD_HELD = Gauge(
    "herwa_bot_reshard_held_events",
    "Events this pod's shards hold for the cut-over (while standby, or waiting for an anchor)",
)
RESHARD_ANCHORS = PromCounter(
    "herwa_bot_reshard_anchors",
    "How each guild's cut-over point was found: found (the previous fleet's last events among "
    "those received), before_session (they preceded all this shard holds: its session, or the "
    "events held too long and dropped), cutoff (its shard's owner "
    "was gone: by time), timed_out (never received: everything recorded)",
    ["outcome"],
)
for _role in ("recording", "standby", "retiring", "idle", "waiting"):
    FLEET_ROLE.labels(_role)
for _outcome in ("recorded", "skipped", "trimmed"):
    RESHARD_EVENTS.labels(_outcome)
for _outcome in ("found", "before_session", "cutoff", "timed_out"):
    RESHARD_ANCHORS.labels(_outcome)
