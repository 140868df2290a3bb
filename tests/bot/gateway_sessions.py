"""How each shard of a bot opened its gateway session, read from the bot's own metrics."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families


def gateway_sessions(metrics_text: str) -> Counter[tuple[int, str]]:
    """(shard, kind) → sessions opened, from ``herwa_bot_gateway_sessions_total``."""
    out: Counter[tuple[int, str]] = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "herwa_bot_gateway_sessions":
            continue
        for sample in family.samples:
            if sample.name == "herwa_bot_gateway_sessions_total":
                out[(int(sample.labels["shard"]), sample.labels["kind"])] += int(sample.value)
    return out


def opened_by(sessions: Counter[tuple[int, str]], shards: set[int], kind: str) -> dict[int, int]:
    return {s: sessions[(s, kind)] for s in sorted(shards)}
