"""The daily member-count snapshot: one row per guild per UTC day in
``member_count_snapshots``, taken by the pod that owns the guild's shard at the first check at
or after the guild's ``snapshot_hour_utc`` (the ``guilds`` table, else the pod setting).

The row itself says the day's snapshot was taken: a pod asks Postgres which of its due guilds
have no row yet, so a handover, a Redis restart or an emptied Redis never takes it again later
in the day with another count. Should two pods race at a handover, both upsert: the later count
replaces the earlier and sets ``ch_ingested_at`` back to NULL so the ETL loads it again (a
trigger gives the row a new ``staged_xid``: postgres migration 0006).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import asyncpg

from herwa.bot import metrics
from herwa.bot.directory import Directory
from herwa.bot.tombstones import Tombstones

log = logging.getLogger(__name__)

UPSERT = (
    "INSERT INTO member_count_snapshots (guild_id, day, member_count, taken_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, day) DO UPDATE SET "
    "member_count = EXCLUDED.member_count, taken_at = EXCLUDED.taken_at, ch_ingested_at = NULL"
)


class Snapshotter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        directory: Directory,
        tombstones: Tombstones,
        *,
        guilds: Callable[[], Iterable[int]],
        check_seconds: float = 2.0,
    ) -> None:
        self.pool = pool
        self.directory = directory
        self.tombstones = tombstones
        self.guilds = guilds  # the guilds of this pod's connected shards
        self.check_seconds = check_seconds
        self._done: set[tuple[str, int]] = set()  # (day, guild) this pod already took

    async def run(self) -> None:
        while True:
            try:
                await self.take_due(datetime.now(UTC))
            except Exception as exc:
                log.warning("member-count snapshot failed, will retry: %s", exc)
            await asyncio.sleep(self.check_seconds)

    async def take_due(self, now: datetime) -> int:
        day = now.date()
        due: list[tuple[int, int]] = []
        for gid in self.guilds():
            count = self.directory.member_counts.get(gid)
            if count is None or gid in self.tombstones:  # none of a deleted server's data
                continue
            hour = self.directory.config(gid).snapshot_hour_utc
            if now.hour >= hour and (day.isoformat(), gid) not in self._done:
                due.append((gid, count))
        if not due:
            return 0
        async with self.pool.acquire() as conn:
            taken = {
                r["guild_id"]
                for r in await conn.fetch(
                    "SELECT guild_id FROM member_count_snapshots "
                    "WHERE day = $1 AND guild_id = ANY($2::bigint[])",
                    day,
                    [gid for gid, _ in due],
                )
            }
            todo = [(gid, count) for gid, count in due if gid not in taken]
            # One row per transaction (not executemany, which is one transaction): an ETL claim
            # locks snapshot rows in its own order, and holding several locks here could
            # deadlock with it. A partial pass is simply finished by the next check.
            for gid, count in todo:
                await conn.execute(UPSERT, gid, day, count, now)
        self._done.update((day.isoformat(), gid) for gid, _ in due)
        if not todo:
            return 0
        metrics.SNAPSHOTS.inc(len(todo))
        return len(todo)
