"""The kopf handlers called directly, against real Postgres and Redis."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import kopf
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from herwa import entitlements
from herwa.operator import handlers, metrics
from herwa.operator.model import Claim
from herwa.operator.reconcile import OperatorRuntime, Subscription, reconcile
from tests.operator.conftest import PREFIX, FakeCR, index_of

GUILD = "81384788765712384"
OTHER_GUILD = "613425648685547541"


async def change(
    cr: FakeCR, memo: kopf.Memo, index: dict[str, list[Claim]] | None = None, reason: str = "create"
) -> kopf.Patch:
    kwargs = cr.kwargs(memo, index if index is not None else index_of(cr))
    await handlers.on_change(reason=reason, **kwargs)
    cr.apply_status(kwargs["patch"])
    patch: kopf.Patch = kwargs["patch"]
    return patch


async def timer(cr: FakeCR, memo: kopf.Memo, index: dict[str, list[Claim]] | None = None) -> None:
    kwargs = cr.kwargs(memo, index if index is not None else index_of(cr))
    await handlers.on_timer(**kwargs)
    cr.apply_status(kwargs["patch"])


async def row(rt: OperatorRuntime, guild: str = GUILD) -> dict[str, Any] | None:
    record = await rt.pool.fetchrow("SELECT * FROM entitlements WHERE guild_id = $1", int(guild))
    return dict(record) if record else None


async def cache(rt: OperatorRuntime, guild: str = GUILD) -> dict[str, Any] | None:
    raw = await rt.redis.get(f"{PREFIX}cmdcache:{guild}")
    return json.loads(raw) if raw else None


async def cached_tier(rt: OperatorRuntime, guild: str = GUILD) -> str | None:
    """The tier in the guild's cache entry; a fallback to the default tier carries a TTL."""
    entry = await cache(rt, guild)
    if entry is None:
        return None
    assert 0 < await rt.redis.ttl(f"{PREFIX}cmdcache:{guild}") <= entitlements.REWARM_TTL_SECONDS
    return str(entry["tier"])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_create_writes_entitlement_cache_and_ready_status(
    runtime: OperatorRuntime, memo: kopf.Memo
) -> None:
    before = sample("herwa_operator_reconciles_total", trigger="create", outcome="active")
    cr = FakeCR("pro", {"guildId": GUILD, "tier": "pro", "expiresAt": "2030-01-01T00:00:00Z"})
    await change(cr, memo)

    stored = await row(runtime)
    assert stored is not None
    assert stored["tier"] == "pro"
    assert "growth" in stored["features"]
    assert "export" not in stored["features"]
    assert json.loads(stored["quotas"])["queries_per_month"] == 20000
    assert stored["source_uid"] == cr.meta["uid"]
    assert stored["valid_until"] == datetime(2030, 1, 1, tzinfo=UTC)
    cached = await cache(runtime)
    assert cached is not None
    assert cached["state"] == "active"
    assert "growth" in cached["commands"]
    assert "export" not in cached["commands"]

    assert cr.status["observedGeneration"] == 1
    assert cr.condition("Ready")["status"] == "True"
    assert cr.condition("EntitlementSynced")["status"] == "True"
    assert cr.condition("CommandCacheSynced")["status"] == "True"
    assert cr.condition("Conflict")["status"] == "False"
    assert (
        sample("herwa_operator_reconciles_total", trigger="create", outcome="active") == before + 1
    )
    assert metrics.BOOK.counts()[("pro", "active")] >= 1


async def test_update_applies_tier_and_overrides_and_is_idempotent(
    runtime: OperatorRuntime, memo: kopf.Memo
) -> None:
    cr = FakeCR("g", {"guildId": GUILD, "tier": "free"})
    await change(cr, memo)
    first_transition = cr.condition("Ready")["lastTransitionTime"]
    cr.edit(
        tier="enterprise",
        featureOverrides={"export": False, "growth": True},
        quotaOverrides={"queries_per_month": 7},
    )
    await change(cr, memo, reason="update")
    stored = await row(runtime)
    assert stored is not None
    assert stored["tier"] == "enterprise"
    assert stored["generation"] == 2
    assert "export" not in stored["features"]
    assert json.loads(stored["quotas"]) == {"history_days": 1825, "queries_per_month": 7}
    cached = await cache(runtime)
    assert cached is not None
    assert "export" not in cached["commands"]
    assert cr.status["observedGeneration"] == 2
    assert cr.condition("Ready")["lastTransitionTime"] == first_transition  # still True

    updated_at = stored["updated_at"]
    await change(cr, memo, reason="resume")  # a restart re-runs resume: nothing changes
    again = await row(runtime)
    assert again is not None
    assert again["updated_at"] == updated_at


async def test_newer_subscription_for_same_guild_is_a_conflict_not_an_overwrite(
    runtime: OperatorRuntime, memo: kopf.Memo
) -> None:
    old = FakeCR("old", {"guildId": GUILD, "tier": "pro"}, created="2025-01-01T00:00:00Z")
    new = FakeCR(
        "new",
        {"guildId": GUILD, "tier": "enterprise"},
        namespace="tenant-b",
        created="2025-01-02T00:00:00Z",
    )
    await change(old, memo, index_of(old))
    await change(new, memo, index_of(old, new))
    assert new.condition("Conflict")["status"] == "True"
    assert new.condition("Ready")["reason"] == "ConflictingSubscription"
    assert "tenant-a/old" in new.condition("Conflict")["message"]
    stored = await row(runtime)
    assert stored is not None
    assert stored["tier"] == "pro"
    assert stored["source_uid"] == old.meta["uid"]

    # The older one goes: its revocation removes its grant, the newer one takes over.
    await handlers.on_delete(body=old.body, meta=old.meta, spec=old.spec, memo=memo)
    assert await row(runtime) is None
    assert await cached_tier(runtime) == "free"
    await timer(new, memo, index_of(new))
    stored = await row(runtime)
    assert stored is not None
    assert stored["tier"] == "enterprise"
    assert new.condition("Ready")["status"] == "True"
    assert new.condition("Conflict")["status"] == "False"


async def test_delete_revokes_only_what_the_object_owns(
    runtime: OperatorRuntime, memo: kopf.Memo
) -> None:
    owner = FakeCR("owner", {"guildId": GUILD, "tier": "pro"})
    loser = FakeCR("loser", {"guildId": GUILD, "tier": "free"}, created="2026-01-01T00:00:00Z")
    await change(owner, memo, index_of(owner, loser))
    await change(loser, memo, index_of(owner, loser))
    await handlers.on_delete(body=loser.body, meta=loser.meta, spec=loser.spec, memo=memo)
    assert await row(runtime) is not None
    assert await cache(runtime) is not None
    await handlers.on_delete(body=owner.body, meta=owner.meta, spec=owner.spec, memo=memo)
    assert await row(runtime) is None
    assert await cached_tier(runtime) == "free"


async def test_timer_repairs_lost_cache_and_hand_edited_row(
    runtime: OperatorRuntime, memo: kopf.Memo
) -> None:
    cr = FakeCR("g", {"guildId": GUILD, "tier": "pro"})
    await change(cr, memo)
    expected_cache = await cache(runtime)
    redis_before = sample("herwa_operator_drift_repairs_total", store="redis")
    pg_before = sample("herwa_operator_drift_repairs_total", store="postgres")

    await timer(cr, memo)  # nothing drifted: nothing repaired
    assert sample("herwa_operator_drift_repairs_total", store="redis") == redis_before

    await runtime.redis.flushdb()  # a Redis restart without persistence
    await timer(cr, memo)
    assert await cache(runtime) == expected_cache
    assert sample("herwa_operator_drift_repairs_total", store="redis") == redis_before + 1

    await runtime.pool.execute("UPDATE entitlements SET tier = 'enterprise', features = '{export}'")
    await timer(cr, memo)
    stored = await row(runtime)
    assert stored is not None
    assert stored["tier"] == "pro"
    assert "export" not in stored["features"]
    assert sample("herwa_operator_drift_repairs_total", store="postgres") == pg_before + 1


async def test_expiry_and_suspension(runtime: OperatorRuntime, memo: kopf.Memo) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    cr = FakeCR(
        "g", {"guildId": GUILD, "tier": "pro", "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    await change(cr, memo)
    assert cr.condition("Ready")["status"] == "True"

    # The timer after expiresAt: entitlement kept for the record, cache says expired.
    sub = Subscription(cr.meta["namespace"], cr.meta["name"], cr.meta["uid"], 1, cr.spec)
    outcome = await reconcile(
        runtime, sub, index_of(cr)[GUILD], trigger="timer", now=expires + timedelta(seconds=1)
    )
    assert outcome.state == "expired"
    assert not outcome.ready
    assert outcome.repaired == []  # expiry is not drift
    cached = await cache(runtime)
    assert cached is not None
    assert cached["state"] == "expired"
    access = entitlements.CommandAccess.from_cache(json.dumps(cached))
    assert access is not None
    assert not access.allows("overview")

    past = FakeCR(
        "past", {"guildId": OTHER_GUILD, "tier": "pro", "expiresAt": "2020-01-01T00:00:00Z"}
    )
    await change(past, memo)
    assert past.condition("Ready")["reason"] == "Expired"
    assert past.status["state"] == "expired"

    cr.edit(suspended=True, expiresAt=None)
    await change(cr, memo, reason="update")
    assert cr.condition("Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "False",
        "reason": "Suspended",
        "observedGeneration": 2,
        "message": "the subscription is suspended; commands are blocked",
        "lastTransitionTime": None,
    }
    stored = await row(runtime)
    assert stored is not None
    assert stored["suspended"] is True
    cached = await cache(runtime)
    assert cached is not None
    assert cached["state"] == "suspended"


@pytest.mark.parametrize(
    ("spec", "reason", "fragment"),
    [
        ({"guildId": GUILD, "tier": "platinum"}, "UnknownTier", "known: free, pro, enterprise"),
        (
            {"guildId": GUILD, "tier": "pro", "featureOverrides": {"teleport": True}},
            "InvalidSpec",
            "unknown feature(s) teleport",
        ),
        (
            {"guildId": GUILD, "tier": "pro", "quotaOverrides": {"parrots": 3}},
            "InvalidSpec",
            "unknown quota(s) parrots",
        ),
        ({"guildId": "42", "tier": "pro"}, "InvalidSpec", "spec.guildId"),
        # Matches a digits-only pattern but overflows bigint: a spec error, not a store error.
        ({"guildId": "99999999999999999999", "tier": "pro"}, "InvalidSpec", "spec.guildId"),
        (
            {"guildId": "9223372036854775808", "tier": "pro"},
            "InvalidSpec",
            "at most 9223372036854775807",
        ),
        (
            {"guildId": GUILD, "tier": "pro", "expiresAt": "2030-01-01T00:00:00"},
            "InvalidSpec",
            "spec.expiresAt",
        ),
    ],
)
async def test_invalid_specs_are_reported_in_status_and_grant_nothing(
    runtime: OperatorRuntime,
    memo: kopf.Memo,
    spec: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    cr = FakeCR("bad", spec)
    await change(cr, memo)
    ready = cr.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert fragment in ready["message"]
    assert await row(runtime) is None
    assert await cache(runtime) is None


async def test_changed_guild_id_moves_the_grant(runtime: OperatorRuntime, memo: kopf.Memo) -> None:
    cr = FakeCR("g", {"guildId": GUILD, "tier": "pro"})
    await change(cr, memo)
    cr.edit(guildId=OTHER_GUILD)
    await change(cr, memo, reason="update")
    assert await row(runtime) is None
    assert await cached_tier(runtime) == "free"
    assert await row(runtime, OTHER_GUILD) is not None
    assert await cache(runtime, OTHER_GUILD) is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_postgres_gives_not_ready_and_a_retry(runtime: OperatorRuntime) -> None:
    pool = await asyncpg.create_pool(
        f"postgresql://x@127.0.0.1:{_closed_port()}/x", min_size=0, timeout=2
    )
    down = OperatorRuntime(pool=pool, redis=runtime.redis, prefix=PREFIX, platform=runtime.platform)
    cr = FakeCR("g", {"guildId": GUILD, "tier": "pro"})
    kwargs = cr.kwargs(kopf.Memo(runtime=down), index_of(cr))
    with pytest.raises(kopf.TemporaryError) as err:
        await handlers.on_change(reason="create", **kwargs)
    assert err.value.delay == 2.0
    cr.apply_status(kwargs["patch"])
    assert cr.condition("Ready")["reason"] == "StoreUnavailable"
    assert cr.condition("EntitlementSynced")["status"] == "Unknown"
    with pytest.raises(kopf.TemporaryError):  # deletion keeps its finalizer and retries
        await handlers.on_delete(
            body=cr.body, meta=cr.meta, spec=cr.spec, memo=kopf.Memo(runtime=down)
        )
    await pool.close()


async def test_unreachable_redis_syncs_postgres_and_retries_the_cache(
    runtime: OperatorRuntime,
) -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{_closed_port()}/0", socket_connect_timeout=1)
    down = OperatorRuntime(pool=runtime.pool, redis=redis, prefix=PREFIX, platform=runtime.platform)
    cr = FakeCR("g", {"guildId": GUILD, "tier": "pro"})
    kwargs = cr.kwargs(kopf.Memo(runtime=down), index_of(cr))
    with pytest.raises(kopf.TemporaryError):
        await handlers.on_change(reason="create", **kwargs)
    cr.apply_status(kwargs["patch"])
    assert cr.condition("EntitlementSynced")["status"] == "True"
    assert cr.condition("CommandCacheSynced")["status"] == "False"
    assert cr.condition("Ready")["reason"] == "StoreUnavailable"
    assert await row(runtime) is not None
    await redis.aclose()


async def test_int64_maximum_guild_id_is_granted(runtime: OperatorRuntime, memo: kopf.Memo) -> None:
    cr = FakeCR("edge", {"guildId": "9223372036854775807", "tier": "pro"})
    await change(cr, memo)
    assert cr.condition("Ready")["status"] == "True"
    assert await row(runtime, "9223372036854775807") is not None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # 64 keys of 19,000 characters: a 1.2 MB spec the API server stores.
        (
            {"featureOverrides": {f"{i:02d}" + "x" * 18_998: True for i in range(64)}},
            "spec.featureOverrides",
        ),
        ({"featureOverrides": {f"f{i}": True for i in range(65)}}, "at most 64 items"),
        ({"quotaOverrides": {"q" * 100_000: 1}}, "spec.quotaOverrides"),
        ({"quotaOverrides": {f"q{i}": 1 for i in range(33)}}, "at most 32 items"),
    ],
)
async def test_oversized_overrides_are_invalid_with_a_bounded_status(
    runtime: OperatorRuntime, memo: kopf.Memo, overrides: dict[str, Any], fragment: str
) -> None:
    cr = FakeCR("huge", {"guildId": GUILD, "tier": "pro", **overrides})
    patch = await change(cr, memo)
    ready = cr.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert fragment in ready["message"]
    # The API server refuses a request body over 3 MB; the status must stay small whatever
    # the spec holds (every condition quotes the message).
    assert len(json.dumps(dict(patch))) < 16_384
    assert await row(runtime) is None
