"""Who may run a command right now: per-user rate limit, entitlement, monthly quota.

Redis keys (``prefix`` is ``HERWA_REDIS_KEY_PREFIX``):

- ``{prefix}ratelimit:{user_id}`` — a fixed-window counter per user across guilds; the first
  hit sets the window's expiry, so the remaining TTL is exactly the retry-after.

Monthly quotas live in Postgres ``quota_usage`` (migration 0013), one row per guild, quota and
UTC calendar month: the check and the increment are one conditional upsert, so concurrent
invocations at the boundary are serialised by the row lock and can never overshoot, and losing
Redis (restarted from an older snapshot, emptied, evicted) never resets a server's quota. A Redis
counter beside it would be a second copy that can fall behind its record; the upsert is one
indexed round trip per quota-counted command, which runs a ClickHouse query anyway.

The entitlement comes from the operator's command cache (:mod:`herwa.entitlements`), which
falls back to Postgres and re-warms itself on a miss. A guild without a GuildSubscription has
the platform's default tier; :meth:`Gate.access` is ``None`` only before any platform is seeded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
from redis.asyncio import Redis

from herwa.entitlements import CommandAccess, allowed_commands, lowest_tier_for

# Returns {admitted (1/0), used after this call, ms until the window resets}.
_RATE_LIMIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
if n > tonumber(ARGV[1]) then return {0, n, ttl} end
return {1, n, ttl}
"""

# Check-then-increment in one statement; no row comes back when the quota is used up.
_QUOTA_TAKE = """
INSERT INTO quota_usage AS q (guild_id, quota, month, used) VALUES ($1, $2, $3, 1)
ON CONFLICT (guild_id, quota, month) DO UPDATE SET used = q.used + 1, updated_at = now()
WHERE q.used < $4
RETURNING used
"""
# Gives a unit back when the query failed on our side; never below zero.
_QUOTA_REFUND = """
UPDATE quota_usage SET used = used - 1, updated_at = now()
WHERE guild_id = $1 AND quota = $2 AND month = $3 AND used > 0
"""
_QUOTA_USED = "SELECT used FROM quota_usage WHERE guild_id = $1 AND quota = $2 AND month = $3"


class CommandOutcome(enum.StrEnum):
    """Metric and usage label of one invocation (low cardinality by construction)."""

    OK = "ok"
    DENIED = "denied"
    OVER_QUOTA = "over_quota"
    RATE_LIMITED = "rate_limited"
    INVALID = "invalid"
    ERROR = "error"


@dataclass(frozen=True)
class RateDecision:
    admitted: bool
    retry_after: timedelta


@dataclass(frozen=True)
class QuotaDecision:
    admitted: bool
    used: int
    limit: int | None  # None: the tier sets no such quota, so it is unlimited
    resets_at: datetime


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def quota_month(now: datetime) -> date:
    """The quota period ``now`` falls in, as its first day (UTC)."""
    return month_bounds(now)[0].date()


def rate_key(prefix: str, user_id: int) -> str:
    return f"{prefix}ratelimit:{user_id}"


class Gate:
    """The three checks: rate limit and entitlement one Redis round trip each (plus Postgres
    on a cache miss), the quota one Postgres statement."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        prefix: str,
        *,
        rate_limit_count: int,
        rate_limit_window: timedelta,
        quota_name: str,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._prefix = prefix
        self._rate_count = rate_limit_count
        self._rate_window_ms = max(1, int(rate_limit_window.total_seconds() * 1000))
        self.quota_name = quota_name
        self._rate = redis.register_script(_RATE_LIMIT)

    async def rate_limit(self, user_id: int) -> RateDecision:
        admitted, _, ttl_ms = await self._rate(
            keys=[rate_key(self._prefix, user_id)], args=[self._rate_count, self._rate_window_ms]
        )
        return RateDecision(bool(admitted), timedelta(milliseconds=int(ttl_ms)))

    async def access(self, guild_id: int) -> CommandAccess | None:
        return await allowed_commands(self._redis, self._pool, self._prefix, guild_id)

    async def unlocking_tier(self, command: str) -> str | None:
        return await lowest_tier_for(self._pool, command)

    async def take_quota(
        self, guild_id: int, access: CommandAccess, now: datetime
    ) -> QuotaDecision:
        _, resets_at = month_bounds(now)
        limit = access.quotas.get(self.quota_name)
        if limit is None:
            return QuotaDecision(True, 0, None, resets_at)
        month = quota_month(now)
        if limit <= 0:
            return QuotaDecision(False, await self.quota_used(guild_id, now), limit, resets_at)
        used = await self._pool.fetchval(_QUOTA_TAKE, guild_id, self.quota_name, month, limit)
        if used is None:
            return QuotaDecision(False, await self.quota_used(guild_id, now), limit, resets_at)
        return QuotaDecision(True, int(used), limit, resets_at)

    async def refund_quota(self, guild_id: int, now: datetime) -> None:
        await self._pool.execute(_QUOTA_REFUND, guild_id, self.quota_name, quota_month(now))

    async def quota_used(self, guild_id: int, now: datetime) -> int:
        used = await self._pool.fetchval(_QUOTA_USED, guild_id, self.quota_name, quota_month(now))
        return int(used or 0)
