"""Who may run a command right now: per-user rate limit, entitlement, monthly quota.

Redis keys (``prefix`` is ``HERWA_REDIS_KEY_PREFIX``):

- ``{prefix}ratelimit:{user_id}`` — a fixed-window counter per user across guilds; the first
  hit sets the window's expiry, so the remaining TTL is exactly the retry-after.
- ``{prefix}quota:{guild_id}:{quota}:{YYYYMM}`` — uses of a quota in a UTC calendar month;
  expires a week after the month ends. The check and the increment are one Lua script, so
  concurrent invocations at the boundary are serialised by Redis and can never overshoot.

The entitlement comes from the operator's command cache (:mod:`herwa.entitlements`), which
falls back to Postgres and re-warms itself on a miss. A guild without a GuildSubscription has
the platform's default tier; :meth:`Gate.access` is ``None`` only before any platform is seeded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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

# Check-then-increment inside Redis: nothing can run between the two.
# Returns {admitted (1/0), used after this call}.
_QUOTA_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return {1, used}
"""

# Gives a unit back when the query failed on our side; never below zero.
_QUOTA_REFUND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class Outcome(enum.StrEnum):
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


def quota_key(prefix: str, guild_id: int, quota: str, now: datetime) -> str:
    return f"{prefix}quota:{guild_id}:{quota}:{now.astimezone(UTC):%Y%m}"


def rate_key(prefix: str, user_id: int) -> str:
    return f"{prefix}ratelimit:{user_id}"


class Gate:
    """The three checks, each one Redis round trip (plus Postgres on a cache miss)."""

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
        self._take = redis.register_script(_QUOTA_TAKE)
        self._refund = redis.register_script(_QUOTA_REFUND)

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
        expire_at = int((resets_at + timedelta(days=7)).timestamp())
        admitted, used = await self._take(
            keys=[quota_key(self._prefix, guild_id, self.quota_name, now)],
            args=[limit, expire_at],
        )
        return QuotaDecision(bool(admitted), int(used), limit, resets_at)

    async def refund_quota(self, guild_id: int, now: datetime) -> None:
        await self._refund(keys=[quota_key(self._prefix, guild_id, self.quota_name, now)])

    async def quota_used(self, guild_id: int, now: datetime) -> int:
        raw = await self._redis.get(quota_key(self._prefix, guild_id, self.quota_name, now))
        return int(raw) if raw is not None else 0
