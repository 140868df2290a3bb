"""What a guild may do: the Redis command cache shared by the operator (writer) and the bot.

Key layout (one key per guild, ``prefix`` is ``HERWA_REDIS_KEY_PREFIX``, default ``herwa:``)::

    {prefix}cmdcache:{guild_id}  →  JSON {"v": 1, "tier": "pro", "state": "active",
                                          "commands": ["channels", "growth", …],   # sorted
                                          "features": [...], "quotas": {...},
                                          "valid_until": "2030-01-01T00:00:00+00:00" | null,
                                          "generation": 3}
    {prefix}cmdcache:{guild_id}  →  JSON {"v": 1, "none": true}   (negative entry, with a TTL)

Postgres (``entitlements`` + ``commands``) is the source of truth; the cache is rebuildable. The
operator writes entries without a TTL and repairs them on a timer. A reader that misses falls back
to Postgres and re-warms the key *with* a TTL (:data:`REWARM_TTL_SECONDS`): if that re-warm races
a revocation (the operator deleting the row and the key between the reader's SELECT and SET), the
stale grant lives at most that long.

A guild without an ``entitlements`` row (no GuildSubscription) gets the platform's default tier
(``tiers.is_default``), resolved and cached like any other entry but always with the re-warm TTL,
so a re-seeded default reaches every such guild within that time. Only while no default tier is
seeded yet is a guild cached as a short-lived negative entry, so that commands there do not query
Postgres every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

# Anything that runs a query: a pool, a connection, or a connection acquired from a pool.
Queryable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

CACHE_VERSION = 1
REWARM_TTL_SECONDS = 300
NEGATIVE_TTL_SECONDS = 60

State = Literal["active", "suspended", "expired"]


def cache_key(prefix: str, guild_id: int) -> str:
    return f"{prefix}cmdcache:{guild_id}"


@dataclass(frozen=True)
class Entitlement:
    """One guild's resolved entitlement, as stored in ``entitlements`` plus its commands."""

    guild_id: int
    tier: str
    features: tuple[str, ...]
    quotas: dict[str, int]
    commands: tuple[str, ...]
    valid_until: datetime | None = None
    suspended: bool = False
    generation: int = 0

    def state(self, now: datetime | None = None) -> State:
        return _state(self.suspended, self.valid_until, now)

    def cache_value(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "v": CACHE_VERSION,
            "tier": self.tier,
            "state": self.state(now),
            "commands": sorted(self.commands),
            "features": sorted(self.features),
            "quotas": dict(sorted(self.quotas.items())),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "generation": self.generation,
        }


def _state(suspended: bool, valid_until: datetime | None, now: datetime | None) -> State:
    if suspended:
        return "suspended"
    if valid_until is not None and valid_until <= (now or datetime.now(UTC)):
        return "expired"
    return "active"


@dataclass(frozen=True)
class FeatureHolders:
    """Which servers hold one feature, as of one read of Postgres: a server with an entitlement
    holds it while that entitlement is active and lists it, any other server when the default
    tier lists it."""

    granted: frozenset[int] = frozenset()
    denied: frozenset[int] = frozenset()  # an entitlement without it, or not active
    default: bool = False

    def holds(self, guild_id: int) -> bool:
        if guild_id in self.denied:
            return False
        return guild_id in self.granted or self.default


@dataclass(frozen=True)
class CommandAccess:
    """What the bot's command gate needs for one guild, read from the cache."""

    tier: str
    state: State
    commands: frozenset[str]
    quotas: dict[str, int] = field(default_factory=dict)
    valid_until: datetime | None = None

    def allows(self, command: str, now: datetime | None = None) -> bool:
        # The expiry is checked here too: the operator's timer marks expiry only every
        # drift interval, the gate must not grant a minute past expiresAt.
        if self.state != "active" or command not in self.commands:
            return False
        return self.valid_until is None or self.valid_until > (now or datetime.now(UTC))

    @classmethod
    def from_cache(cls, raw: bytes | str) -> CommandAccess | None:
        data = json.loads(raw)
        if data.get("v") != CACHE_VERSION or data.get("none"):
            return None
        until = data.get("valid_until")
        return cls(
            tier=data["tier"],
            state=data["state"],
            commands=frozenset(data["commands"]),
            quotas={str(k): int(v) for k, v in data.get("quotas", {}).items()},
            valid_until=datetime.fromisoformat(until) if until else None,
        )


def _encode(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


async def write_command_cache(
    redis: Redis,
    prefix: str,
    guild_id: int,
    entitlement: Entitlement,
    *,
    ttl_seconds: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Set the guild's cache entry; returns whether it differed from what was there."""
    key = cache_key(prefix, guild_id)
    value = _encode(entitlement.cache_value(now))
    old = await redis.set(key, value, ex=ttl_seconds, get=True)
    return old is None or (old.decode() if isinstance(old, bytes) else old) != value


async def delete_command_cache(redis: Redis, prefix: str, guild_id: int) -> bool:
    """Remove the guild's cache entry; returns whether there was one."""
    return bool(await redis.delete(cache_key(prefix, guild_id)))


async def read_command_cache(redis: Redis, prefix: str, guild_id: int) -> str | None:
    """The raw cache entry (for drift checks); ``None`` when the key is missing."""
    raw = await redis.get(cache_key(prefix, guild_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def expected_cache(entitlement: Entitlement, now: datetime | None = None) -> str:
    """The exact cache string the operator writes for ``entitlement``."""
    return _encode(entitlement.cache_value(now))


_ENTITLEMENT_SQL = """
    SELECT e.guild_id, e.tier, e.features, e.quotas, e.valid_until, e.suspended, e.generation,
           coalesce(array(SELECT c.command FROM commands c
                          WHERE c.feature = ANY(e.features) ORDER BY c.command),
                    '{}') AS commands
    FROM entitlements e WHERE e.guild_id = $1
"""


_DEFAULT_SQL = """
    SELECT $1::bigint AS guild_id, t.tier, t.quotas, NULL::timestamptz AS valid_until,
           false AS suspended, 0::bigint AS generation,
           coalesce(array(SELECT tf.feature FROM tier_features tf
                          WHERE tf.tier = t.tier ORDER BY tf.feature), '{}') AS features,
           coalesce(array(SELECT c.command FROM commands c JOIN tier_features tf
                              ON tf.feature = c.feature AND tf.tier = t.tier
                          ORDER BY c.command),
                    '{}') AS commands
    FROM tiers t WHERE t.is_default
"""


async def load_entitlement(conn: Queryable, guild_id: int) -> Entitlement | None:
    """The guild's entitlement from Postgres with its commands resolved, or ``None``."""
    return _entitlement(await conn.fetchrow(_ENTITLEMENT_SQL, guild_id))


async def default_entitlement(conn: Queryable, guild_id: int) -> Entitlement | None:
    """What ``guild_id`` gets without a GuildSubscription: the default tier, or ``None`` while
    no platform with a default tier has been seeded."""
    return _entitlement(await conn.fetchrow(_DEFAULT_SQL, guild_id))


async def effective_entitlement(conn: Queryable, guild_id: int) -> Entitlement | None:
    """The guild's own entitlement, else the default tier's."""
    return await load_entitlement(conn, guild_id) or await default_entitlement(conn, guild_id)


def _entitlement(row: asyncpg.Record | None) -> Entitlement | None:
    if row is None:
        return None
    quotas = row["quotas"]
    if isinstance(quotas, str):  # asyncpg returns jsonb as text unless a codec is set
        quotas = json.loads(quotas)
    return Entitlement(
        guild_id=row["guild_id"],
        tier=row["tier"],
        features=tuple(row["features"]),
        quotas={str(k): int(v) for k, v in quotas.items()},
        commands=tuple(row["commands"]),
        valid_until=row["valid_until"],
        suspended=row["suspended"],
        generation=row["generation"],
    )


async def feature_holders(
    conn: Queryable, feature: str, now: datetime | None = None
) -> FeatureHolders:
    """Which servers hold ``feature`` now (:class:`FeatureHolders`)."""
    granted: set[int] = set()
    denied: set[int] = set()
    for row in await conn.fetch(
        "SELECT guild_id, features, valid_until, suspended FROM entitlements"
    ):
        active = _state(row["suspended"], row["valid_until"], now) == "active"
        (granted if active and feature in row["features"] else denied).add(int(row["guild_id"]))
    default = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM tiers t JOIN tier_features tf ON tf.tier = t.tier
                          WHERE t.is_default AND tf.feature = $1)""",
        feature,
    )
    return FeatureHolders(frozenset(granted), frozenset(denied), bool(default))


async def allowed_commands(
    redis: Redis, pool: asyncpg.Pool, prefix: str, guild_id: int
) -> CommandAccess | None:
    """The guild's command access: from the cache, else from Postgres (re-warming the cache).

    ``None`` means the guild has no entitlement and no default tier is seeded.
    """
    raw = await read_command_cache(redis, prefix, guild_id)
    if raw is not None:
        return CommandAccess.from_cache(raw)
    entitlement = await effective_entitlement(pool, guild_id)
    if entitlement is None:
        await redis.set(
            cache_key(prefix, guild_id),
            _encode({"v": CACHE_VERSION, "none": True}),
            ex=NEGATIVE_TTL_SECONDS,
            nx=True,
        )
        return None
    value = expected_cache(entitlement)
    # nx: an entry the operator wrote meanwhile is newer than what this reader saw.
    await redis.set(cache_key(prefix, guild_id), value, ex=REWARM_TTL_SECONDS, nx=True)
    return CommandAccess.from_cache(value)


async def lowest_tier_for(conn: Queryable, command: str) -> str | None:
    """The lowest-ranked tier whose features unlock ``command`` (for "upgrade to …" replies)."""
    tier: str | None = await conn.fetchval(
        """SELECT t.tier FROM commands c
           JOIN tier_features tf ON tf.feature = c.feature
           JOIN tiers t ON t.tier = tf.tier
           WHERE c.command = $1 ORDER BY t.rank, t.tier LIMIT 1""",
        command,
    )
    return tier
