"""A short-lived Redis cache of finished replies, keyed by guild + command + options.

The guild id is part of every key and always comes from the interaction, so one guild can never
be served another guild's entry. Replies (text, embeds, PNGs) are cached rather than query rows:
that skips the chart render too, and needs no codec per query type.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis.asyncio import Redis

from herwa.bot.commands._metrics import CACHE
from herwa.bot.commands._reply import Reply


def cache_key(prefix: str, guild_id: int, command: str, options: dict[str, Any]) -> str:
    digest = hashlib.sha256(
        json.dumps(options, sort_keys=True, default=str, separators=(",", ":")).encode()
    ).hexdigest()[:32]
    return f"{prefix}cmdresult:{guild_id}:{command}:{digest}"


class ResultCache:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def get(self, guild_id: int, command: str, options: dict[str, Any]) -> Reply | None:
        if not self.enabled:
            return None
        raw = await self._redis.get(cache_key(self._prefix, guild_id, command, options))
        CACHE.labels("miss" if raw is None else "hit").inc()
        if raw is None:
            return None
        return Reply.decode(raw.encode() if isinstance(raw, str) else raw)

    async def put(self, guild_id: int, command: str, options: dict[str, Any], reply: Reply) -> None:
        if self.enabled:
            key = cache_key(self._prefix, guild_id, command, options)
            await self._redis.set(key, reply.encode(), ex=self._ttl)

    async def drop_guild(self, guild_id: int) -> None:
        """After a settings change or a deletion request: nothing stale may be served."""
        keys = [
            k
            async for k in self._redis.scan_iter(
                match=f"{self._prefix}cmdresult:{guild_id}:*", count=500
            )
        ]
        if keys:
            await self._redis.delete(*keys)
