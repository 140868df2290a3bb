"""The shared command cache: key layout, Postgres fallback with re-warm, the upgrade hint."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from herwa import entitlements, platform
from herwa.operator.reconcile import OperatorRuntime
from tests.operator.conftest import PREFIX

GUILD = 81384788765712384


async def _grant(
    rt: OperatorRuntime,
    tier: str,
    features: list[str],
    until: datetime | None = None,
    suspended: bool = False,
) -> None:
    await platform.seed(rt.pool, rt.platform)
    await rt.pool.execute(
        """INSERT INTO entitlements (guild_id, tier, features, quotas, valid_until, suspended,
               source_namespace, source_name, source_uid)
           VALUES ($1, $2, $3, '{"queries_per_month": 5}', $4, $5, 'ns', 'x', 'uid-1')""",
        GUILD,
        tier,
        features,
        until,
        suspended,
    )


async def test_miss_falls_back_to_postgres_and_rewarms_with_a_ttl(runtime: OperatorRuntime) -> None:
    await _grant(runtime, "pro", ["overview", "growth"])
    access = await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD)
    assert access is not None
    assert access.tier == "pro"
    assert access.commands == {"overview", "growth"}
    assert access.quotas == {"queries_per_month": 5}
    assert access.allows("growth")
    assert not access.allows("export")
    key = f"{PREFIX}cmdcache:{GUILD}"
    raw = await runtime.redis.get(key)
    assert raw is not None
    cached = json.loads(raw)
    assert cached["commands"] == ["growth", "overview"]
    assert 0 < await runtime.redis.ttl(key) <= entitlements.REWARM_TTL_SECONDS
    # A second read is served from the cache even when Postgres no longer agrees.
    await runtime.pool.execute("DELETE FROM entitlements")
    again = await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD)
    assert again == access


async def test_guild_without_entitlement_gets_the_default_tier(runtime: OperatorRuntime) -> None:
    await platform.seed(runtime.pool, runtime.platform)
    access = await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD)
    assert access is not None
    free = runtime.platform.tier("free")
    assert free is not None
    assert access.tier == "free"
    assert access.state == "active"
    free_commands = {c for c, f in runtime.platform.commands.items() if f in free.features}
    assert access.commands == free_commands
    assert access.quotas == free.quotas
    assert access.allows("overview")
    assert not access.allows("growth")
    # Cached like a re-warm, so a re-seeded default reaches the guild within the TTL.
    key = f"{PREFIX}cmdcache:{GUILD}"
    assert 0 < await runtime.redis.ttl(key) <= entitlements.REWARM_TTL_SECONDS
    assert await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD) == access


async def test_guild_is_cached_negatively_until_a_platform_is_seeded(
    runtime: OperatorRuntime,
) -> None:
    assert await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD) is None
    key = f"{PREFIX}cmdcache:{GUILD}"
    raw = await runtime.redis.get(key)
    assert raw is not None
    assert json.loads(raw) == {"v": 1, "none": True}
    assert 0 < await runtime.redis.ttl(key) <= entitlements.NEGATIVE_TTL_SECONDS
    assert await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD) is None


async def test_operator_write_has_no_ttl_and_reports_change(runtime: OperatorRuntime) -> None:
    await _grant(runtime, "free", ["overview"])
    ent = await entitlements.load_entitlement(runtime.pool, GUILD)
    assert ent is not None
    assert await entitlements.write_command_cache(runtime.redis, PREFIX, GUILD, ent) is True
    assert await entitlements.write_command_cache(runtime.redis, PREFIX, GUILD, ent) is False
    assert await runtime.redis.ttl(f"{PREFIX}cmdcache:{GUILD}") == -1
    assert await entitlements.delete_command_cache(runtime.redis, PREFIX, GUILD) is True
    assert await entitlements.delete_command_cache(runtime.redis, PREFIX, GUILD) is False


async def test_suspended_and_expired_entitlements_allow_nothing(runtime: OperatorRuntime) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    await _grant(runtime, "pro", ["overview"], until=soon)
    access = await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD)
    assert access is not None
    assert access.allows("overview")
    # The gate enforces expiresAt itself, even before the operator marks the entry expired.
    assert not access.allows("overview", now=soon + timedelta(seconds=1))
    await runtime.redis.flushdb()
    await runtime.pool.execute("UPDATE entitlements SET suspended = true")
    suspended = await entitlements.allowed_commands(runtime.redis, runtime.pool, PREFIX, GUILD)
    assert suspended is not None
    assert suspended.state == "suspended"
    assert not suspended.allows("overview")


async def test_lowest_tier_that_unlocks_a_command(runtime: OperatorRuntime) -> None:
    await platform.seed(runtime.pool, runtime.platform)
    assert await entitlements.lowest_tier_for(runtime.pool, "overview") == "free"
    assert await entitlements.lowest_tier_for(runtime.pool, "growth") == "pro"
    assert await entitlements.lowest_tier_for(runtime.pool, "export") == "enterprise"
    assert await entitlements.lowest_tier_for(runtime.pool, "nonexistent") is None
