"""Backfill after downtime: read channel history the gateway did not deliver.

Whenever a guild becomes available on a shard through a fresh IDENTIFY (a first start, a crash,
a session Discord invalidated), every tracked text channel of that guild is read with
``GET /channels/{id}/messages?after=…`` from the newest message already stored for the channel
(or from ``now - backfill_window_hours`` if that is later, or if none is stored) up to the
moment the backfill started — later messages arrive live. Pages of 100, oldest first; one
channel at a time per guild and at most a few guilds at once, through discord.py's HTTP client,
which honours Discord's rate-limit headers and 429 ``Retry-After``. Rows go through the same
buffer (source ``backfill``) and merge idempotently with gateway rows on the message id.
Edits visible in history (``edited_timestamp``) are recorded too; messages created *and*
deleted during the downtime are invisible to any backfill.

A backfill is pending in Postgres (``bot_backfill_pending``) from the flush that carries the
GUILD_CREATE's gateway mark until the flush that commits its last rows (:class:`BackfillOp`,
applied by the batch's transaction): a shard handed over or crashed mid-backfill is RESUMEd by
its next owner, which receives no GUILD_CREATE, so that owner finishes every backfill still
pending for the shard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import discord

from herwa.bot import channel_types, metrics
from herwa.bot.buffer import FlushBuffer
from herwa.bot.capture import DISCORD_EPOCH_MS, channel_payload, edit_row, message_row
from herwa.bot.client import CaptureClient
from herwa.bot.directory import Directory
from herwa.bot.metadata import MetadataWriter
from herwa.bot.tombstones import Tombstones

log = logging.getLogger(__name__)

PAGE = 100
_GUILDS_AT_ONCE = 4


def snowflake_at(ms: float) -> int:
    return int(ms - DISCORD_EPOCH_MS) << 22


@dataclass(frozen=True)
class BackfillOp:
    """Record a guild's backfill up to ``until`` as pending, or (``done``) as finished, in the
    flush that carries it: the marker commits with the gateway mark covering the GUILD_CREATE,
    its removal with the backfill's last rows."""

    shard_id: int
    guild_id: int
    until: int
    done: bool


class Shard(Protocol):
    """The shard a backfill reads through: its id and its client (None once closed)."""

    shard_id: int
    client: CaptureClient | None


class Backfiller:
    def __init__(
        self,
        pool: asyncpg.Pool,
        buffer: FlushBuffer,
        directory: Directory,
        tombstones: Tombstones,
        metadata: MetadataWriter,
        *,
        shard_count: int,
        window_hours: float,
        message_content: bool,
    ) -> None:
        self.pool = pool
        self.buffer = buffer
        self.directory = directory
        self.tombstones = tombstones
        self.metadata = metadata
        self.shard_count = shard_count
        self.window_hours = window_hours
        self.message_content = message_content
        self._tasks: dict[int, set[asyncio.Task[None]]] = defaultdict(set)
        self._slots = asyncio.Semaphore(_GUILDS_AT_ONCE)
        self.messages = 0
        self.done_guilds = 0

    def schedule(self, runner: Shard, guild_id: int) -> None:
        # Everything created up to now: later messages reach the live stream.
        until = snowflake_at(time.time() * 1000 + 1) | ((1 << 22) - 1)
        self.buffer.add_extra(BackfillOp(runner.shard_id, guild_id, until, done=False))
        self._start(runner, guild_id, until)

    def _start(self, runner: Shard, guild_id: int, until: int) -> None:
        task = asyncio.get_running_loop().create_task(self._tracked(runner, guild_id, until))
        self._tasks[runner.shard_id].add(task)
        task.add_done_callback(self._tasks[runner.shard_id].discard)

    async def cancel_shard(self, shard_id: int) -> None:
        tasks = list(self._tasks.pop(shard_id, ()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel(self) -> None:
        for sid in list(self._tasks):
            await self.cancel_shard(sid)

    @property
    def running(self) -> int:
        return sum(len(t) for t in self._tasks.values())

    async def resume_pending(self, runner: Shard) -> None:
        """Guilds whose backfill an earlier owner of this shard did not finish (handed over,
        crashed): run them again."""
        rows = await self.pool.fetch(
            "SELECT guild_id, until_id FROM bot_backfill_pending "
            "WHERE (guild_id >> 22) % $1 = $2 ORDER BY guild_id",
            self.shard_count,
            runner.shard_id,
        )
        for row in rows:
            self._start(runner, int(row["guild_id"]), int(row["until_id"]))

    async def _tracked(self, runner: Shard, guild_id: int, until: int) -> None:
        """The backfill, then its removal from the pending markers in the flush that commits
        its last rows (they are in the buffer already): whoever owns the shard next finishes
        a backfill whose rows were not committed."""
        for attempt in range(10):
            client = runner.client
            if client is None or client.is_closed():
                # Scheduled by a GUILD_CREATE read while the shard was being closed: its
                # marker is queued, and the shard's next owner runs it.
                return
            if await self._guild(runner, guild_id, until):
                break
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        else:
            log.error("backfill of guild %s gave up; it stays pending for the next owner", guild_id)
            return
        self.buffer.add_extra(BackfillOp(runner.shard_id, guild_id, until, done=True))

    async def _guild(self, runner: Shard, guild_id: int, until: int) -> bool:
        async with self._slots:
            directory = self.directory
            if not directory.guild_channels(guild_id, channel_types.ANY):
                await self._load_channels(runner, guild_id)
            config = directory.config(guild_id)
            channels = [
                c
                for c in directory.guild_channels(
                    guild_id, channel_types.MESSAGE_CHANNELS | channel_types.THREADS
                )
                if config.tracks(directory.thread_parent(c) or c)
            ]
            floor = self.tombstones.backfill_floor(
                guild_id, snowflake_at((time.time() - self.window_hours * 3600) * 1000)
            )
            if floor is None:  # the server's data was deleted: read none of its history
                return True
            ok = True
            for channel_id in channels:
                try:
                    await self._channel(runner, guild_id, channel_id, floor, until)
                except asyncio.CancelledError:
                    raise
                except (discord.Forbidden, discord.NotFound):
                    continue  # no access to this channel's history: nothing to recover
                except Exception as exc:
                    # One failing channel must not stop the others; the guild is retried.
                    ok = False
                    log.warning(
                        "backfill of channel %s failed: %s: %s", channel_id, type(exc).__name__, exc
                    )
            if ok:
                self.done_guilds += 1
            return ok

    async def _load_channels(self, runner: Shard, guild_id: int) -> None:
        """A shard RESUMEd from a mark whose GUILD_CREATE's channels its last owner had not
        written yet knows none of the guild's channels: read them from Discord, or the
        backfill would find nothing to read and count the guild done."""
        client = runner.client
        if client is None:
            return
        for raw in await client.http.get_all_guild_channels(guild_id):
            d = channel_payload(dict(raw))
            if d is not None:
                self.directory.add_channel(guild_id, d)
                self.metadata.channel_changed(guild_id, d)

    async def _channel(
        self, runner: Shard, guild_id: int, channel_id: int, floor: int, until: int
    ) -> None:
        client = runner.client
        if client is None:
            return
        parent = self.directory.thread_parent(channel_id)
        async with self.pool.acquire() as conn:
            if parent is None:
                last = await conn.fetchval(
                    "SELECT max(message_id) FROM message_events "
                    "WHERE channel_id = $1 AND thread_id IS NULL",
                    channel_id,
                )
            else:
                last = await conn.fetchval(
                    "SELECT max(message_id) FROM message_events "
                    "WHERE channel_id = $1 AND thread_id = $2",
                    parent,
                    channel_id,
                )
        after = max(int(last or 0), floor)
        while after < until:
            page: list[Any] = await client.http.logs_from(channel_id, PAGE, after=after)
            if not page:
                return
            ids = [int(m["id"]) for m in page]
            for m in page:
                if int(m["id"]) > until:
                    continue
                row = message_row(
                    m,
                    self.directory,
                    source="backfill",
                    guild_id=guild_id,
                    content=self.message_content,
                )
                await self.buffer.wait_for_room()
                if row is not None:
                    self.buffer.add("message_events", row)
                if m.get("edited_timestamp"):
                    edit = edit_row({**m, "guild_id": guild_id}, self.directory)
                    if edit is not None:
                        self.buffer.add("message_edits", edit)
            self.messages += len(page)
            metrics.BACKFILL_MESSAGES.inc(len(page))
            after = max(ids)
            if len(page) < PAGE:
                return


__all__ = ["BackfillOp", "Backfiller", "snowflake_at"]
