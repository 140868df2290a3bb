"""Prometheus metrics of the slash commands. Labels: command name and outcome only — both
come from closed sets (registered commands, :class:`CommandOutcome`), never from guild or user
ids."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INVOCATIONS = Counter(
    "herwa_command_invocations",
    "Slash-command invocations by outcome (ok, denied, over_quota, rate_limited, invalid, error)",
    ["command", "outcome"],
)
LATENCY = Histogram(
    "herwa_command_latency_seconds",
    "From receiving the interaction to the final response",
    ["command"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)
CACHE = Counter(
    "herwa_command_cache_lookups", "Result-cache lookups by result (hit, miss)", ["result"]
)
