"""The gate: entitlement (cache, Postgres fallback), Manage Server, quota, rate limit, usage,
metrics — through the simulator, plus the quota script under heavy concurrency."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import discord
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from herwa.bot.commands import Gate, quota_month
from herwa.config import CommandSettings
from herwa.devstack import Endpoints
from herwa.entitlements import CommandAccess
from tests.commands.conftest import (
    PREFIX,
    Harness,
    is_ephemeral,
    opt,
    start_harness,
    stop_harness,
    text_of,
)


def invocations(command: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "herwa_command_invocations_total", {"command": command, "outcome": outcome}
    )
    return value or 0.0


async def test_denied_names_the_unlocking_tier(harness: Harness) -> None:
    h = harness
    # No subscription at all: the platform's default tier applies; the cache miss goes to
    # Postgres and re-warms the default tier's entry with a TTL.
    result = await h.invoke("growth")
    assert is_ephemeral(result)
    assert text_of(result) == (
        "`/growth` is not included in this server's **free** tier. It is part of the **pro** tier."
    )
    assert await h.redis.ttl(f"{PREFIX}cmdcache:{h.guild}") > 0

    await h.grant("free", {"queries_per_month": 10, "history_days": 30})
    denied_before = invocations("growth", "denied")
    result = await h.invoke("growth")
    assert is_ephemeral(result)
    assert text_of(result) == (
        "`/growth` is not included in this server's **free** tier. It is part of the **pro** tier."
    )
    assert invocations("growth", "denied") == denied_before + 1
    result = await h.invoke("export")
    assert text_of(result).endswith("It is part of the **enterprise** tier.")
    # The re-warmed cache entry (with a TTL) answered the second command, not Postgres.
    raw = await h.redis.get(f"{PREFIX}cmdcache:{h.guild}")
    assert raw is not None
    access = CommandAccess.from_cache(raw)
    assert access is not None
    assert access.tier == "free"
    assert 0 < await h.redis.ttl(f"{PREFIX}cmdcache:{h.guild}") <= 300

    await h.pool.execute("UPDATE entitlements SET suspended = true WHERE guild_id = $1", h.guild)
    await h.redis.delete(f"{PREFIX}cmdcache:{h.guild}")
    result = await h.invoke("overview")
    assert text_of(result).startswith("This server's Herwa subscription is suspended")

    # Denials never spend the quota; they are counted for billing with their outcome.
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 0
    assert await _usage(h, "denied", "growth") == 2
    assert await _usage(h, "denied", "overview") == 1


async def _usage(h: Harness, outcome: str, command: str) -> int:
    """Invocations recorded in Postgres (the record: no Redis counter to lose)."""
    n = await h.pool.fetchval(
        "SELECT coalesce(sum(invocations), 0) FROM command_usage"
        " WHERE guild_id = $1 AND outcome = $2 AND command = $3",
        h.guild,
        outcome,
        command,
    )
    return int(n)


async def test_quota_exhausted_then_over_quota(harness: Harness) -> None:
    h = harness
    await h.grant("free", {"queries_per_month": 3, "history_days": 30})
    for days in (1, 2, 3):
        result = await h.invoke("overview", [opt("days", days)])
        assert result["original"]["embeds"][0]["title"] == "Server overview"
    over_before = invocations("overview", "over_quota")
    result = await h.invoke("overview")
    assert is_ephemeral(result)
    text = text_of(result)
    assert text.startswith(
        "This server has used all 3 queries of its monthly quota on the free tier. It resets <t:"
    )
    resets = int(re.search(r"<t:(\d+):R>", text).group(1))  # type: ignore[union-attr]
    assert datetime.fromtimestamp(resets, UTC).day == 1
    assert invocations("overview", "over_quota") == over_before + 1
    # /usage still answers (it costs nothing) and shows the exact figures.
    result = await h.invoke("usage")
    assert "Queries: 3 of 3" in text_of(result)
    assert "Left: 0" in text_of(result)
    assert await _usage(h, "ok", "overview") == 3
    assert await _usage(h, "over_quota", "overview") == 1


async def test_concurrent_invocations_at_the_boundary_never_exceed_it(
    harness: Harness,
) -> None:
    h = harness
    await h.grant("free", {"queries_per_month": 5, "history_days": 30})
    members = h.users[:12]  # different members, so the per-user rate limit is not in play
    # Each asks for a different range: a cached answer costs no quota, so a repeated question
    # answered from the cache would pass the quota by right.
    results = await asyncio.gather(
        *(h.invoke("overview", [opt("days", 1 + i)], user=u) for i, u in enumerate(members))
    )
    answered = [text_of(r) for r in results]
    ok = [t for t in answered if t.startswith("Server overview")]
    over = [t for t in answered if "monthly quota" in t]
    assert (len(ok), len(over)) == (5, 7)
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 5


async def test_quota_under_heavy_concurrency(harness: Harness) -> None:
    """Four gates on four Redis connection pools, as four bot pods would be, 80 calls each."""
    h = harness
    access = CommandAccess("free", "active", frozenset({"overview"}), {"queries_per_month": 50})
    now = datetime.now(UTC)
    clients = [Redis.from_url(h.endpoints.redis_url) for _ in range(4)]
    try:
        gates = [
            Gate(
                r,
                h.pool,
                PREFIX,
                rate_limit_count=5,
                rate_limit_window=timedelta(1),
                quota_name="queries_per_month",
            )
            for r in clients
        ]
        decisions = await asyncio.gather(
            *(g.take_quota(h.guild, access, now) for g in gates for _ in range(80))
        )
    finally:
        for r in clients:
            await r.aclose()
    assert sum(d.admitted for d in decisions) == 50
    assert sorted(d.used for d in decisions if d.admitted) == list(range(1, 51))
    assert await h.rt.gate.quota_used(h.guild, now) == 50
    assert (
        await h.pool.fetchval(
            "SELECT used FROM quota_usage WHERE guild_id = $1 AND month = $2",
            h.guild,
            quota_month(now),
        )
        == 50
    )
    # A refund makes room for exactly one more.
    await h.rt.gate.refund_quota(h.guild, now)
    again = await asyncio.gather(*(h.rt.gate.take_quota(h.guild, access, now) for _ in range(20)))
    assert sum(d.admitted for d in again) == 1


@pytest.fixture
async def strict(migrated: Endpoints) -> AsyncIterator[Harness]:
    """Two commands per user per minute, and 'slow' means anything: every answer defers."""
    settings = CommandSettings(
        rate_limit_count=2, rate_limit_window_seconds=60, defer_after_seconds=0.001, page_size=2
    )
    h, extra = await start_harness(migrated, settings)
    try:
        yield h
    finally:
        await stop_harness(h, extra)


async def test_rate_limit_and_deferred_answers(strict: Harness) -> None:
    h = strict
    await h.grant("free")
    first = await h.invoke("heatmap", include_bytes=True)
    assert first["deferred"]
    assert first["complete"]
    assert first["original"]["embeds"][0]["title"] == "Activity heatmap"
    assert first["original"]["attachments"][0]["filename"] == "heatmap.png"
    second = await h.invoke("overview")
    assert second["deferred"]
    limited_before = invocations("usage", "rate_limited")
    third = await h.invoke("usage")
    assert is_ephemeral(third)
    assert not third["deferred"]
    text = text_of(third)
    assert re.fullmatch(r"You are sending commands too quickly\. Try again <t:\d+:R>\.", text)
    retry = int(re.search(r"<t:(\d+):R>", text).group(1))  # type: ignore[union-attr]
    assert 0 < retry - datetime.now(UTC).timestamp() <= 62
    assert invocations("usage", "rate_limited") == limited_before + 1
    # Another member is not affected; the limited call did not spend the guild's quota, nor
    # did the answer served from the cache (the same /overview as the second call).
    other = await h.invoke("overview", user=h.users[1])
    assert other["original"]["embeds"][0]["title"] == "Server overview"
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 2
    assert (
        REGISTRY.get_sample_value("herwa_command_latency_seconds_count", {"command": "heatmap"})
        is not None
    )


async def test_admin_commands_need_manage_server(harness: Harness) -> None:
    h = harness
    await h.grant("enterprise")
    member = int(discord.Permissions(view_channel=True, send_messages=True).value)
    for name, options in (
        ("export", None),
        ("config", [{"name": "timezone", "type": 1, "options": [opt("name", "Europe/Berlin")]}]),
        ("privacy", [{"name": "delete-server-data", "type": 1, "options": [opt("confirm", True)]}]),
    ):
        result = await h.invoke(name, options, user=h.users[2], permissions=member)
        assert is_ephemeral(result)
        assert text_of(result) == f"`/{name}` needs the **Manage Server** permission."
    assert await h.pool.fetchval("SELECT count(*) FROM deletion_requests") == 0
    assert await h.pool.fetchval("SELECT count(*) FROM guilds") == 0
    # Members' own commands still work for them.
    result = await h.invoke(
        "privacy",
        [{"name": "opt-out", "type": 1, "options": []}],
        user=h.users[2],
        permissions=member,
    )
    assert text_of(result).startswith("You have opted out")


async def test_cached_answers_spend_no_quota(harness: Harness) -> None:
    h = harness
    await h.grant("free", {"queries_per_month": 2, "history_days": 30})
    first = await h.invoke("overview", [opt("days", 3)])
    again = [await h.invoke("overview", [opt("days", 3)], user=u) for u in h.users[1:4]]
    assert all(a["original"]["embeds"] == first["original"]["embeds"] for a in again)
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 1
    # The one query left is still there for a question not asked before.
    fresh = await h.invoke("overview", [opt("days", 5)])
    assert fresh["original"]["embeds"][0]["title"] == "Server overview"
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 2


@pytest.mark.parametrize(("status", "defer_after"), [(404, 2.5), (503, 2.5), (404, 0.001)])
async def test_a_refused_final_reply_is_refunded_and_recorded(
    migrated: Endpoints, status: int, defer_after: float
) -> None:
    """Discord refuses the answer (the interaction expired, or a 5xx): the member saw
    nothing, so the quota is given back, and usage and metrics still record the failure."""
    settings = CommandSettings(page_size=2, rate_limit_count=100, defer_after_seconds=defer_after)
    h, extra = await start_harness(migrated, settings)
    try:
        await h.grant("free", {"queries_per_month": 10, "history_days": 30})
        errors_before = invocations("heatmap", "error")
        # Deferred: the "thinking…" callback is accepted, the edit with the answer refused.
        # discord.py tries a 5xx five times (25 s of back-off) before giving up: refuse all.
        attempts = 5 if status >= 500 else 1
        h.sim.interactions.fail_next_replies(status, attempts, after=1 if defer_after < 1 else 0)
        rec = h.sim.activity.invoke_command(
            h.guild, h.channels[0], h.users[0], "heatmap", [], at_ms=h.sim.now_ms()
        )
        await asyncio.wait_for(rec.refused.wait(), 20)

        async def recorded() -> bool:
            return await _usage(h, "error", "heatmap") == 1

        await wait_until(recorded, 45)
        assert invocations("heatmap", "error") == errors_before + 1
        assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 0
        assert await _usage(h, "ok", "heatmap") == 0
        # The answer was computed: asked again, it comes from the cache, still free.
        retry = await h.invoke("heatmap")
        assert retry["original"]["embeds"][0]["title"] == "Activity heatmap"
        assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 0
    finally:
        await stop_harness(h, extra)


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
