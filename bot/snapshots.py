"""The daily member-count snapshot: one row per guild per UTC day in
``member_count_snapshots``, taken by the pod that owns the guild's shard at the first check at
or after the guild's ``snapshot_hour_utc`` (the ``guilds`` table, else the pod setting) and
upserted — a later snapshot the same day (another pod after a handover) replaces the count and
sets ``ch_ingested_at`` back to NULL so the ETL loads it again (a trigger gives the row a new
``staged_xid``: postgres migration 0006). A Redis marker per guild and day keeps it to one
snapshot a day in the normal case.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from herwa.bot import metrics

if TYPE_CHECKING:
    from herwa.bot.app import BotApp

log = logging.getLogger(__name__)

UPSERT = (
    "INSERT INTO member_count_snapshots (guild_id, day, member_count, taken_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, day) DO UPDATE SET "
    "member_count = EXCLUDED.member_count, taken_at = EXCLUDED.taken_at, ch_ingested_at = NULL"
)


class Snapshotter:
    def __init__(self, app: BotApp, check_seconds: float = 2.0) -> None:
        self.app = app
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
        app = self.app
        day = now.date()
        due: list[tuple[int, int]] = []
        for runner in list(app.runners.values()):
            if not runner.connected:
                continue
            for gid in list(runner.guilds):
                count = app.directory.member_counts.get(gid)
                if count is None or gid in app.tombstones:  # none of a deleted server's data
                    continue
                hour = app.directory.config(gid).snapshot_hour_utc
                if hour is None:
                    hour = app.settings.snapshot_hour_utc
                if now.hour >= hour and (day.isoformat(), gid) not in self._done:
                    due.append((gid, count))
        if not due:
            return 0
        pipe = app.redis.pipeline(transaction=False)
        for gid, _ in due:
            pipe.exists(app.key("snapshot", day.isoformat(), gid))
        done = await pipe.execute()
        todo = [(gid, count) for (gid, count), seen in zip(due, done, strict=True) if not seen]
        self._done.update(
            (day.isoformat(), gid) for (gid, _), seen in zip(due, done, strict=True) if seen
        )
        if not todo:
            return 0
        async with app.pool.acquire() as conn:
            # One row per transaction (not executemany, which is one transaction): an ETL claim
            # locks snapshot rows in its own order, and holding several locks here could
            # deadlock with it. The upsert is idempotent, so a partial pass is simply redone.
            for gid, count in todo:
                await conn.execute(UPSERT, gid, day, count, now)
        pipe = app.redis.pipeline(transaction=False)
        for gid, _ in todo:
            pipe.set(app.key("snapshot", day.isoformat(), gid), "1", ex=2 * 86400)
        await pipe.execute()
        self._done.update((day.isoformat(), gid) for gid, _ in todo)
        metrics.SNAPSHOTS.inc(len(todo))
        return len(todo)
