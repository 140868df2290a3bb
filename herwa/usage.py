"""Command-usage counts: recorded in Postgres, and the ETL's drain of Redis counters.

Every invocation is one ``command_usage`` row (``invocations`` 1) inserted by the bot when the
command ends, under a fresh ``drain_id``: Postgres is the record, so emptying or restarting Redis
loses no count. (Counting in Redis and draining later lost every undrained count with Redis.)
ClickHouse sums ``invocations``, so one row per invocation and one per drained counter add up
alike.

Drain: releases before this one counted in Redis, one hash per UTC hour,
``{prefix}usage:{hour epoch seconds}``, field ``{guild_id}|{outcome}|{command}``. The ETL keeps
draining those so a rolling upgrade loses nothing: the live hash is RENAMEd to
``{prefix}usage-draining:{drain_id}:{hour}`` (atomic), copied into ``command_usage`` under that
drain_id with ON CONFLICT DO NOTHING, committed, and only then deleted. A draining key left by a
crashed run is drained first; copying it again is a no-op thanks to the drain_id in the primary
key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from herwa.entitlements import Queryable


@dataclass(frozen=True)
class UsageCount:
    guild_id: int
    command: str
    outcome: str
    hour: datetime
    invocations: int


def _hour(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("usage timestamps must be timezone-aware")
    epoch = int(at.timestamp())
    return epoch - epoch % 3600


def live_key(prefix: str, hour_epoch: int) -> str:
    return f"{prefix}usage:{hour_epoch}"


async def record(pg: Queryable, guild_id: int, command: str, outcome: str, at: datetime) -> None:
    """Count one invocation of ``command`` in ``guild_id`` with ``outcome`` (ok, denied, …)."""
    if "|" in outcome:
        raise ValueError("outcome must not contain '|'")
    await pg.execute(
        "INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations) "
        "VALUES ($1, $2, $3, $4, $5, 1)",
        f"bot:{uuid.uuid4().hex}",
        guild_id,
        command,
        datetime.fromtimestamp(_hour(at), UTC),
        outcome,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(fields: dict[bytes | str, bytes | str], hour_epoch: int) -> list[UsageCount]:
    hour = datetime.fromtimestamp(hour_epoch, UTC)
    counts = []
    for field, value in fields.items():
        guild, outcome, command = _text(field).split("|", 2)
        if int(_text(value)) > 0:
            counts.append(UsageCount(int(guild), command, outcome, hour, int(value)))
    return counts


async def _scan(redis: Redis, pattern: str) -> list[str]:
    return sorted(
        [
            k.decode() if isinstance(k, bytes) else k
            async for k in redis.scan_iter(match=pattern, count=1000)
        ]
    )


async def drain(redis: Redis, prefix: str, pg: asyncpg.Connection) -> int:
    """Move every counter into ``command_usage``; returns the number of rows staged."""
    staged = 0
    draining = f"{prefix}usage-draining:"
    for key in await _scan(redis, f"{draining}*"):
        staged += await _drain_key(redis, pg, key, draining)
    for key in await _scan(redis, f"{prefix}usage:*"):
        hour = key.rsplit(":", 1)[1]
        if not hour.isdigit():
            continue
        target = f"{draining}{uuid.uuid4().hex}:{hour}"
        try:
            await redis.rename(key, target)
        except Exception as exc:  # the key vanished: another drain took it, nothing to do
            if "no such key" not in str(exc).lower():
                raise
            continue
        staged += await _drain_key(redis, pg, target, draining)
    return staged


async def _drain_key(redis: Redis, pg: asyncpg.Connection, key: str, draining: str) -> int:
    drain_id, hour = key[len(draining) :].rsplit(":", 1)
    counts = _parse(await redis.hgetall(key), int(hour))
    if counts:
        async with pg.transaction():
            await pg.executemany(
                """
                INSERT INTO command_usage
                    (drain_id, guild_id, command, hour, outcome, invocations)
                VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
                """,
                [
                    (drain_id, c.guild_id, c.command, c.hour, c.outcome, c.invocations)
                    for c in counts
                ],
            )
    # Only after Postgres has committed the rows.
    await redis.delete(key)
    return len(counts)
