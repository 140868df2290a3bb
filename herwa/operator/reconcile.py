"""The reconciler: one GuildSubscription → one ``entitlements`` row → one Redis cache entry.

A guild whose subscription goes (deleted, or its guildId edited away) falls back to the
platform's default tier: its cache entry is rewritten to that tier at once, with the re-warm TTL.

Kept free of kopf so that it is called directly by the fast tests. Every write for a guild
happens under a transaction-scoped advisory lock on that guild, so two subscriptions for one
guild — or a reconcile and a revocation — never interleave, whichever replica or task runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import redis.exceptions
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

from herwa import entitlements, platform
from herwa.operator.model import (
    Claim,
    Condition,
    Reason,
    SpecError,
    SubscriptionSpec,
    parse_spec,
    winner,
)

log = logging.getLogger(__name__)
Conn = asyncpg.Connection | PoolConnectionProxy

# What "the store is unavailable" looks like from asyncpg and redis-py: connection failures,
# timeouts, and server-side errors (a database not migrated yet is also "not usable now").
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@dataclass
class OperatorRuntime:
    """The operator's connections and configuration, shared by every handler."""

    pool: asyncpg.Pool
    redis: Redis
    prefix: str
    platform: platform.Platform
    seeded: bool = False
    _seed_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure_seeded(self) -> None:
        """Seed the platform once per process; retried by the next reconcile if it fails."""
        if self.seeded:
            return
        async with self._seed_lock:
            if not self.seeded:
                report = await platform.seed(self.pool, self.platform)
                log.info(
                    "platform seeded",
                    extra={"rows_changed": report.changed, "kept_tiers": list(report.kept_tiers)},
                )
                self.seeded = True


@dataclass(frozen=True)
class Subscription:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, object]


@dataclass
class ReconcileOutcome:
    """What a reconcile found and did; the handler turns it into status, events and metrics."""

    state: str  # active | suspended | expired | conflict | invalid | unknown_tier | unavailable
    reason: str
    message: str
    conditions: list[Condition]
    tier: str | None = None
    guild_id: int | None = None
    retry: bool = False
    repaired: list[str] = field(default_factory=list)  # "postgres", "redis" (timer only)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def ready(self) -> bool:
        return self.state == "active"


def _not_ready(
    state: str,
    reason: str,
    message: str,
    *,
    conflict: bool = False,
    synced: Literal["False", "Unknown"] = "False",
    tier: str | None = None,
    guild_id: int | None = None,
    retry: bool = False,
) -> ReconcileOutcome:
    conditions = [
        Condition("Ready", "False", reason, message),
        Condition("EntitlementSynced", synced, reason, message),
        Condition("CommandCacheSynced", synced, reason, message),
        Condition(
            "Conflict",
            "True" if conflict else "False",
            Reason.CONFLICT if conflict else Reason.NO_CONFLICT,
            message if conflict else "no other GuildSubscription claims this guild",
        ),
    ]
    return ReconcileOutcome(
        state, reason, message, conditions, tier=tier, guild_id=guild_id, retry=retry
    )


async def _lock_guild(conn: Conn, guild_id: int) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('herwa:guild:' || $1, 0))", str(guild_id)
    )


async def reconcile(
    rt: OperatorRuntime,
    sub: Subscription,
    claims: Iterable[Claim],
    *,
    trigger: str,
    now: datetime | None = None,
) -> ReconcileOutcome:
    """Bring Postgres and Redis in line with ``sub``; never raises for store failures."""
    now = now or datetime.now(UTC)
    try:
        spec = parse_spec(sub.spec)
    except SpecError as exc:
        return _not_ready("invalid", Reason.INVALID_SPEC, str(exc))
    claims = list(claims)
    owner = winner(claims)
    if owner is not None and owner.uid != sub.uid:
        return _not_ready(
            "conflict",
            Reason.CONFLICT,
            f"guild {spec.guild_id} is already claimed by GuildSubscription {owner.ref} "
            f"(created {owner.created}); this one is newer and grants nothing",
            conflict=True,
            tier=spec.tier,
            guild_id=spec.guild,
        )
    try:
        await rt.ensure_seeded()
        return await _apply(rt, sub, spec, trigger=trigger, now=now)
    except STORE_ERRORS as exc:
        log.warning(
            "store unavailable",
            extra={
                "subscription": f"{sub.namespace}/{sub.name}",
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        return _not_ready(
            "unavailable",
            Reason.STORE_UNAVAILABLE,
            f"Postgres or Redis unavailable ({type(exc).__name__}: {exc}); retrying",
            synced="Unknown",
            retry=True,
            tier=spec.tier,
            guild_id=spec.guild,
        )


async def _apply(
    rt: OperatorRuntime, sub: Subscription, spec: SubscriptionSpec, *, trigger: str, now: datetime
) -> ReconcileOutcome:
    out: ReconcileOutcome | None = None
    async with rt.pool.acquire() as conn, conn.transaction():
        await _lock_guild(conn, spec.guild)
        tier = await conn.fetchrow("SELECT tier, quotas FROM tiers WHERE tier = $1", spec.tier)
        if tier is None:
            known = [r["tier"] for r in await conn.fetch("SELECT tier FROM tiers ORDER BY rank")]
            return _not_ready(
                "unknown_tier",
                Reason.UNKNOWN_TIER,
                f"tier {spec.tier!r} is not configured (known: {', '.join(known) or 'none'})",
                tier=spec.tier,
                guild_id=spec.guild,
            )
        resolved = await _resolve(conn, spec, tier)
        if isinstance(resolved, str):
            return _not_ready(
                "invalid", Reason.INVALID_SPEC, resolved, tier=spec.tier, guild_id=spec.guild
            )
        features, quotas = resolved
        previous_owner = await conn.fetchrow(
            "SELECT source_namespace, source_name, source_uid FROM entitlements "
            "WHERE guild_id = $1",
            spec.guild,
        )
        changed = await conn.fetchval(
            """INSERT INTO entitlements AS e (guild_id, tier, features, quotas, valid_until,
                   suspended, source_namespace, source_name, source_uid, generation)
               VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (guild_id) DO UPDATE SET
                   tier = EXCLUDED.tier, features = EXCLUDED.features,
                   quotas = EXCLUDED.quotas, valid_until = EXCLUDED.valid_until,
                   suspended = EXCLUDED.suspended, source_namespace = EXCLUDED.source_namespace,
                   source_name = EXCLUDED.source_name, source_uid = EXCLUDED.source_uid,
                   generation = EXCLUDED.generation, updated_at = now()
               WHERE (e.tier, e.features, e.quotas, e.valid_until, e.suspended,
                      e.source_namespace, e.source_name, e.source_uid, e.generation)
                     IS DISTINCT FROM
                     (EXCLUDED.tier, EXCLUDED.features, EXCLUDED.quotas, EXCLUDED.valid_until,
                      EXCLUDED.suspended, EXCLUDED.source_namespace, EXCLUDED.source_name,
                      EXCLUDED.source_uid, EXCLUDED.generation)
               RETURNING true""",
            spec.guild,
            spec.tier,
            features,
            json.dumps(quotas, sort_keys=True),
            spec.expires_at,
            spec.suspended,
            sub.namespace,
            sub.name,
            sub.uid,
            sub.generation,
        )
        # A guildId edited in place leaves this object's row for the old guild behind.
        stale = await conn.fetch(
            "DELETE FROM entitlements WHERE source_uid = $1 AND guild_id <> $2 RETURNING guild_id",
            sub.uid,
            spec.guild,
        )
        entitlement = await entitlements.load_entitlement(conn, spec.guild)
        if entitlement is None:  # written above in this same transaction
            raise RuntimeError(f"entitlement for guild {spec.guild} vanished mid-transaction")
        events: list[tuple[str, str, str]] = []
        if previous_owner is not None and previous_owner["source_uid"] != sub.uid:
            events.append(
                (
                    "Normal",
                    "TookOver",
                    f"guild {spec.guild_id} was held by "
                    f"{previous_owner['source_namespace']}/"
                    f"{previous_owner['source_name']}, which is gone or newer",
                )
            )
        repaired: list[str] = []
        if (
            changed
            and trigger == "timer"
            and previous_owner is not None
            and previous_owner["source_uid"] == sub.uid
        ):
            repaired.append("postgres")
        try:
            cache_ok = await _sync_cache(rt, conn, entitlement, stale, now, trigger, repaired)
            cache_error = ""
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            cache_ok, cache_error = False, f"Redis unavailable ({type(exc).__name__}: {exc})"
        out = _synced_outcome(spec, entitlement, now, cache_ok, cache_error)
        out.repaired, out.events = repaired, events + out.events
        for target in repaired:
            out.events.append(
                (
                    "Warning",
                    "DriftRepaired",
                    f"{target} differed from the subscription and was rewritten",
                )
            )
    return out


async def _resolve(
    conn: Conn,
    spec: SubscriptionSpec,
    tier: asyncpg.Record,
) -> tuple[list[str], dict[str, int]] | str:
    """Tier features and quotas with the overrides applied, or why the overrides are invalid."""
    granted = {
        r["feature"]
        for r in await conn.fetch("SELECT feature FROM tier_features WHERE tier = $1", spec.tier)
    }
    known = {r["feature"] for r in await conn.fetch("SELECT feature FROM features")}
    unknown = sorted(set(spec.feature_overrides) - known)
    quota_names: set[str] = set()
    for row in await conn.fetch("SELECT quotas FROM tiers"):
        quota_names |= set(json.loads(row["quotas"]))
    unknown_quotas = sorted(set(spec.quota_overrides) - quota_names)
    problems = []
    if unknown:
        problems.append(
            f"spec.featureOverrides: unknown feature(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    if unknown_quotas:
        problems.append(
            f"spec.quotaOverrides: unknown quota(s) {', '.join(unknown_quotas)} "
            f"(known: {', '.join(sorted(quota_names))})"
        )
    if problems:
        return "; ".join(problems)
    for feature, enabled in spec.feature_overrides.items():
        (granted.add if enabled else granted.discard)(feature)
    quotas = {str(k): int(v) for k, v in json.loads(tier["quotas"]).items()}
    quotas.update(spec.quota_overrides)
    return sorted(granted), quotas


async def _sync_cache(
    rt: OperatorRuntime,
    conn: Conn,
    entitlement: entitlements.Entitlement,
    stale: Iterable[asyncpg.Record],
    now: datetime,
    trigger: str,
    repaired: list[str],
) -> bool:
    await _fall_back(rt, conn, [int(row["guild_id"]) for row in stale])
    expected = entitlements.expected_cache(entitlement, now)
    current = await entitlements.read_command_cache(rt.redis, rt.prefix, entitlement.guild_id)
    if current == expected:
        return True
    await entitlements.write_command_cache(
        rt.redis, rt.prefix, entitlement.guild_id, entitlement, now=now
    )
    if trigger == "timer" and not _only_expiry(current, expected):
        repaired.append("redis")
    return True


def _only_expiry(current: str | None, expected: str) -> bool:
    """True when the entry differs only because expiresAt has passed since it was written."""
    if current is None:
        return False
    try:
        old, new = json.loads(current), json.loads(expected)
    except ValueError:
        return False
    return bool(
        old.get("state") == "active"
        and new.get("state") == "expired"
        and {**old, "state": "expired"} == new
    )


def _synced_outcome(
    spec: SubscriptionSpec,
    ent: entitlements.Entitlement,
    now: datetime,
    cache_ok: bool,
    cache_error: str,
) -> ReconcileOutcome:
    state = ent.state(now)
    until = ent.valid_until.isoformat() if ent.valid_until else "no expiry"
    ent_cond = Condition(
        "EntitlementSynced",
        "True",
        Reason.SYNCED,
        f"tier {ent.tier}, {len(ent.features)} features, {until}",
    )
    cache_cond = (
        Condition(
            "CommandCacheSynced", "True", Reason.SYNCED, f"{len(ent.commands)} commands cached"
        )
        if cache_ok
        else Condition("CommandCacheSynced", "False", Reason.STORE_UNAVAILABLE, cache_error)
    )
    no_conflict = Condition(
        "Conflict", "False", Reason.NO_CONFLICT, "no other GuildSubscription claims this guild"
    )
    if not cache_ok:
        ready = Condition("Ready", "False", Reason.STORE_UNAVAILABLE, cache_error)
        return ReconcileOutcome(
            "unavailable",
            Reason.STORE_UNAVAILABLE,
            cache_error,
            [ready, ent_cond, cache_cond, no_conflict],
            tier=spec.tier,
            guild_id=spec.guild,
            retry=True,
        )
    if state == "suspended":
        reason, message = Reason.SUSPENDED, "the subscription is suspended; commands are blocked"
    elif state == "expired":
        reason, message = Reason.EXPIRED, f"the subscription expired at {until}"
    else:
        reason, message = Reason.ACTIVE, f"guild {spec.guild_id} has tier {ent.tier}"
    ready = Condition("Ready", "True" if state == "active" else "False", reason, message)
    return ReconcileOutcome(
        state,
        reason,
        message,
        [ready, ent_cond, cache_cond, no_conflict],
        tier=spec.tier,
        guild_id=spec.guild,
    )


async def _fall_back(rt: OperatorRuntime, conn: Conn, guilds: Iterable[int]) -> None:
    """Point each guild's cache entry at the default tier, the guild's entitlement row gone.

    Written rather than deleted: a bot's re-warm racing the revocation (``SET NX`` of the grant
    it read just before) then finds the key taken. The TTL lets a re-seeded default reach it.
    """
    for guild in guilds:
        default = await entitlements.default_entitlement(conn, guild)
        if default is None:  # no default tier seeded: the bot caches "none" itself
            await entitlements.delete_command_cache(rt.redis, rt.prefix, guild)
        else:
            await entitlements.write_command_cache(
                rt.redis, rt.prefix, guild, default, ttl_seconds=entitlements.REWARM_TTL_SECONDS
            )


async def revoke(rt: OperatorRuntime, uid: str, guild_hint: int | None) -> list[int]:
    """Remove every entitlement this object owns; their guilds fall back to the default tier.

    Returns the guild ids.
    """
    async with rt.pool.acquire() as conn, conn.transaction():
        if guild_hint is not None:
            await _lock_guild(conn, guild_hint)
        rows = await conn.fetch(
            "DELETE FROM entitlements WHERE source_uid = $1 RETURNING guild_id", uid
        )
        guilds = [int(r["guild_id"]) for r in rows]
        # Inside the lock: a successor's write for the same guild cannot slip in between.
        await _fall_back(rt, conn, guilds)
    return guilds
