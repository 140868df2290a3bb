"""Guild and channel metadata (the ``guilds`` and ``channels`` rows) written from what the
gateway says of them: a queue the gateway handlers fill without waiting, and one task that
writes it to Postgres, off the hot path."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg

from herwa.bot import channel_types, guild_settings, metrics
from herwa.bot.buffer import dead_letter, refused
from herwa.bot.capture import rejected
from herwa.json_types import Json

log = logging.getLogger(__name__)


class MetadataWriter:
    def __init__(self, pool: asyncpg.Pool, defaults: guild_settings.GuildConfig) -> None:
        self.pool = pool
        self.defaults = defaults  # a new guild's row starts with the pod's defaults
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    # -- called from gateway handlers: queue, never block ---------------------------------
    def guild_available(self, d: Json) -> None:
        self._queue.put_nowait(("guild", d))

    def guild_updated(self, d: Json) -> None:
        self._queue.put_nowait(("profile", d))

    def guild_left(self, guild_id: int) -> None:
        self._queue.put_nowait(("left", guild_id))

    def channel_changed(self, guild_id: int, d: Json) -> None:
        self._queue.put_nowait(("channel", (guild_id, d)))

    async def run(self) -> None:
        """Guild and channel metadata upserts (rare, off the hot path), retried until done.
        Only an outage is retried: a row Postgres refuses is set aside (``dead_letter_rows``)
        and an item that cannot be read is counted and skipped, so one bad name never holds
        back the metadata queued behind it."""
        while True:
            kind, item = await self._queue.get()
            backoff = 0.1
            while True:
                try:
                    async with self.pool.acquire() as conn:
                        await upsert_meta(conn, kind, item, self.defaults)
                    break
                except Exception as exc:
                    if refused(exc):
                        rejected(f"metadata:{kind}", "malformed")
                        break
                    log.warning("metadata write failed, retrying: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)


# The metadata tables' dead-letter series exist from the start, like the staging tables' ones
# (an alert on increase() misses a series whose first sample is already 1).
for _table in ("guilds", "channels"):
    metrics.DEAD_LETTER_ROWS.labels(_table)

_CHANNEL_COLUMNS = ("channel_id", "guild_id", "parent_id", "name", "kind")
_CHANNEL_UPSERT = (
    "INSERT INTO channels (channel_id, guild_id, parent_id, name, kind) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel_id) DO UPDATE SET "
    "parent_id = EXCLUDED.parent_id, name = EXCLUDED.name, kind = EXCLUDED.kind, "
    "updated_at = now()"
)


async def _write_rows(
    conn: Any, table: str, sql: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """All rows in one statement; if Postgres refuses one, each row on its own, and the refused
    ones go to ``dead_letter_rows`` (the upserts are idempotent, so redoing the others is
    harmless)."""
    try:
        await conn.executemany(sql, rows)
        return
    except Exception as exc:
        if not refused(exc):
            raise
    for row in rows:
        try:
            await conn.execute(sql, *row)
        except Exception as exc:
            if not refused(exc):
                raise
            await dead_letter(conn, table, columns, row, exc)


async def upsert_meta(
    conn: Any, kind: str, item: Any, defaults: guild_settings.GuildConfig
) -> None:
    if kind == "guild":
        d: Json = item
        gid = int(d["id"])
        joined = d.get("joined_at")
        # A new guild starts with the pod's defaults; from then on its row is the authority.
        await _write_rows(
            conn,
            "guilds",
            guild_settings.REGISTER,
            guild_settings.REGISTER_COLUMNS,
            [
                (
                    gid,
                    d.get("name"),
                    d.get("icon"),
                    d.get("owner_id"),
                    datetime.fromisoformat(joined) if joined else None,
                    defaults.timezone,
                    defaults.snapshot_hour_utc,
                    defaults.count_bot_messages,
                )
            ],
        )
        channels = [*d.get("channels", ()), *d.get("threads", ())]
        await _upsert_channels(conn, gid, channels)
    elif kind == "profile":
        p: Json = item
        await _write_rows(
            conn,
            "guilds",
            guild_settings.PROFILE,
            guild_settings.PROFILE_COLUMNS,
            [(p["id"], p["name"], p["icon"], p["owner_id"])],
        )
    elif kind == "channel":
        gid, c = item
        await _upsert_channels(conn, gid, [c])
    elif kind == "left":
        await guild_settings.left(conn, int(item))


async def _upsert_channels(conn: Any, guild_id: int, channels: list[Json]) -> None:
    if not channels:
        return
    await _write_rows(
        conn,
        "channels",
        _CHANNEL_UPSERT,
        _CHANNEL_COLUMNS,
        [
            (
                int(c["id"]),
                guild_id,
                int(c["parent_id"]) if c.get("parent_id") else None,
                c.get("name"),
                channel_types.kind_of(int(c.get("type", 0))),
            )
            for c in channels
        ],
    )
