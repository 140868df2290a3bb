"""Cross-pod shard coordination in Redis.

Keys (``P`` = the configured key prefix, ``N`` = total shard count):

- ``P bot:members:N`` — sorted set: pod name → heartbeat expiry (ms). A pod is live while its
  expiry is in the future; every heartbeat prunes expired members. Keyed by the shard count:
  while the shard count changes (:mod:`herwa.bot.generations`) each fleet shares out its own
  shards among its own pods.
- ``P bot:standby:N:{shard}`` — set (with a TTL) while a standby fleet of ``N`` shards has the
  shard connected: the cut-over waits until every shard of the new count is.
- ``P bot:lease:N:{shard}`` — the shard's lease: value ``{pod}:{fence}`` (fence from
  ``INCR P bot:fence:N:{shard}``), with a TTL renewed by the holder. A shard is opened only after
  its lease is taken and closed before it is released; a holder that cannot renew in time
  closes its shard (self-fencing). The lease decides who should run a shard; whose rows are
  staged is fenced in Postgres (``bot_gateway_marks.epoch``, :mod:`herwa.bot.app`), which holds
  even while Redis is unreachable or after it lost its data.
- ``P bot:identify:{bucket}`` — ``SET NX PX window``: at most one IDENTIFY per
  ``max_concurrency`` bucket (``shard % max_concurrency``) per window, across all pods and
  every shard count (Discord's buckets are per token, whatever the shard count).

Assignment is rendezvous hashing over the live members: shard ``s`` belongs to the member with
the highest ``hash(member, s)``. Adding or removing a pod moves only the shards whose top
member changed (about 1/n of them).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from redis.asyncio import Redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# How much longer than the identify window a slot is held (see Coordinator.identify_slot).
IDENTIFY_MARGIN = 1.2


def rendezvous_owner(members: list[str], shard_id: int) -> str | None:
    best: tuple[int, str] | None = None
    for m in members:
        digest = hashlib.blake2b(f"{m}\x00{shard_id}".encode(), digest_size=8).digest()
        score = (int.from_bytes(digest, "big"), m)
        if best is None or score > best:
            best = score
    return None if best is None else best[1]


def assigned_shards(members: list[str], me: str, shard_count: int) -> set[int]:
    return {s for s in range(shard_count) if rendezvous_owner(members, s) == me}


class Coordinator:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        pod: str,
        shard_count: int,
        member_ttl: float,
        identify_window: float,
        max_concurrency: int,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.pod = pod
        self.shard_count = shard_count
        self.member_ttl = member_ttl
        self.identify_window = identify_window
        self.max_concurrency = max_concurrency
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # -- keys -----------------------------------------------------------------------------
    @property
    def members_key(self) -> str:
        return f"{self.prefix}bot:members:{self.shard_count}"

    def lease_key(self, shard_id: int) -> str:
        return f"{self.prefix}bot:lease:{self.shard_count}:{shard_id}"

    def standby_key(self, shard_id: int) -> str:
        return f"{self.prefix}bot:standby:{self.shard_count}:{shard_id}"

    # -- membership -----------------------------------------------------------------------
    async def heartbeat(self) -> list[str]:
        """Renew this pod's membership; return the live members, sorted."""
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.members_key, {self.pod: now_ms + int(self.member_ttl * 1000)})
        pipe.zremrangebyscore(self.members_key, "-inf", now_ms)
        pipe.zrange(self.members_key, 0, -1)
        result = await pipe.execute()
        return sorted(m.decode() for m in result[2])

    async def leave(self) -> None:
        await self.redis.zrem(self.members_key, self.pod)

    # -- leases ---------------------------------------------------------------------------
    async def acquire(self, shard_id: int, ttl: float) -> str | None:
        fence = await self.redis.incr(f"{self.prefix}bot:fence:{self.shard_count}:{shard_id}")
        token = f"{self.pod}:{fence}"
        ok = await self.redis.set(self.lease_key(shard_id), token, nx=True, px=int(ttl * 1000))
        return token if ok else None

    async def renew(self, shard_id: int, token: str, ttl: float) -> bool:
        result = await self._renew(keys=[self.lease_key(shard_id)], args=[token, int(ttl * 1000)])
        return bool(result)

    async def release(self, shard_id: int, token: str) -> None:
        await self._release(keys=[self.lease_key(shard_id)], args=[token])

    # -- identify -------------------------------------------------------------------------
    async def identify_slot(self, shard_id: int, *, poll: float = 0.05) -> None:
        """Wait until this pod may IDENTIFY ``shard_id``: one per bucket per window."""
        bucket = shard_id % self.max_concurrency
        key = f"{self.prefix}bot:identify:{bucket}"
        # The slot is held a little longer than the window: it is granted here, but the gateway
        # counts the IDENTIFY when it arrives, and one that travels slower than the next (another
        # connection, another gateway node) would otherwise land inside the window and be refused.
        held_ms = int(self.identify_window * IDENTIFY_MARGIN * 1000)
        # Polling: the slot frees by TTL expiry, which Redis does not announce.
        while not await self.redis.set(  # noqa: ASYNC110
            key, f"{self.pod}:{shard_id}", nx=True, px=held_ms
        ):
            await asyncio.sleep(poll)
