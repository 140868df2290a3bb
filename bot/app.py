"""The bot pod: stores, buffer, coordination loop, shard runners, telemetry, shutdown.

Shard state lives in Postgres and is written inside each flush's transaction, together with the
rows it describes (postgres migration 0009), so it never runs ahead of or lags behind them and
survives Redis being restarted or emptied:

- ``bot_gateway_marks`` — per shard: the last gateway session and sequence whose rows are
  committed, the resume URL, when the shard was last known alive, and ``epoch``, the shard's
  fence. A runner bumps the epoch when it loads the mark; a flush carrying an older epoch writes
  none of that shard's state and stages none of its receive-time-keyed rows (its new owner
  RESUMEs from the mark and so receives those events again). The next owner of a shard
  RESUMEs from the mark, so Discord replays exactly what was received but never committed:
  nothing is lost and nothing is stored twice.
- ``bot_voice_open`` — the open voice sessions; ``bot_member_counts`` — member count per guild
  (for shards that RESUME and so get no GUILD_CREATE, and for the daily snapshot).
- ``bot_backfill_pending`` — backfills not yet committed (:mod:`herwa.bot.backfill`).

Redis holds only what may be lost (:mod:`herwa.bot.sharding`: membership, leases, the identify
slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from herwa.bot import metrics
from herwa.bot.backfill import Backfiller, BackfillOp
from herwa.bot.buffer import TABLES, Batch, FlushBuffer, dead_letter, refused
from herwa.bot.capture import rejected
from herwa.bot.commands import CommandDeps
from herwa.bot.commands.settings import CONFIG_CHANNEL
from herwa.bot.directory import Directory, GuildConfig
from herwa.bot.generations import Generations
from herwa.bot.shard import Mark, MemberCountOp, ShardRunner
from herwa.bot.sharding import Coordinator, assigned_shards
from herwa.bot.snapshots import Snapshotter
from herwa.bot.tombstones import Tombstones
from herwa.bot.voice import VoiceOp, VoiceTracker
from herwa.config import BotSettings, DiscordSettings
from herwa.stores import rows_affected
from herwa.telemetry import Readiness

log = logging.getLogger(__name__)
Json = dict[str, Any]
# Where each staging row holds its guild id: a fenced shard's rows are found by their guild.
_GUILD_COLUMN = {table: columns.index("guild_id") for table, columns in TABLES.items()}
_MEMBER_EVENT = TABLES["member_events"].index("event")
_GUILD_EVENT = TABLES["guild_events"].index("event")
# The rows whose key holds the bot's receive time (Discord sends no time for a leave or a voice
# change): a replayed event gets another key, so only one pod may stage them.
_RECEIVE_TIME_KEYED: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "voice_sessions": lambda row: True,
    "member_events": lambda row: row[_MEMBER_EVENT] == "leave",
    "guild_events": lambda row: row[_GUILD_EVENT] == "leave",
}
for _table in _RECEIVE_TIME_KEYED:
    metrics.ROWS_FENCED.labels(_table)

# A shard is closed once this share of its lease has passed since its last confirmed renewal
# was *sent* (Redis counts the TTL from no earlier): the rest of the lease is the time to stop
# reading its gateway before another pod may take it. Checked on a clock of its own, whether
# or not Redis answers.
FENCE_AFTER = 0.6


class BotApp:
    def __init__(
        self,
        *,
        settings: BotSettings,
        discord_settings: DiscordSettings,
        pool: asyncpg.Pool,
        redis: Redis,
        prefix: str,
        pod: str,
        token: str,
        shard_count: int,
        max_concurrency: int,
        commands: CommandDeps | None = None,
    ) -> None:
        self.settings = settings
        # None only in tests that exercise capture alone; a deployed pod always serves commands.
        self.commands = commands
        self.discord_settings = discord_settings
        self.pool = pool
        self.redis = redis
        self.prefix = prefix
        self.pod = pod
        self.token = token
        self.shard_count = shard_count
        self.directory = Directory(
            GuildConfig(
                count_bot_messages=settings.count_bot_messages,
                snapshot_hour_utc=settings.snapshot_hour_utc,
            )
        )
        self.voice = VoiceTracker(self.directory, settings.voice_session_max_hours)
        # Deleted servers: shared with the commands, which apply /privacy at once.
        self.tombstones = commands.tombstones if commands is not None else Tombstones()
        self.tombstones.on_deleted = self.voice.drop_guilds
        self.buffer = FlushBuffer(
            pool,
            interval=settings.flush_interval_seconds,
            max_rows=settings.flush_max_rows,
            capacity=settings.buffer_max_rows,
            after_commit=self._after_commit,
            in_commit=self._in_commit,
            marks=self._marks,
        )
        self.coordinator = Coordinator(
            redis,
            prefix=prefix,
            pod=pod,
            shard_count=shard_count,
            member_ttl=settings.member_ttl_seconds,
            identify_window=settings.identify_window_seconds,
            max_concurrency=max_concurrency,
        )
        self.backfiller = Backfiller(self)
        self.fleet = Generations(self)  # which shard count records (resharding)
        self.snapshots = Snapshotter(self)
        self.runners: dict[int, ShardRunner] = {}
        self.desired: set[int] = set()
        self.members: list[str] = []
        self._lease_renewed: dict[int, float] = {}  # monotonic time the last renewal was sent
        self._fencing: set[int] = set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._meta: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._failed: set[int] = set()

    # -- keys -----------------------------------------------------------------------------
    def key(self, *parts: object) -> str:
        return self.prefix + "bot:" + ":".join(str(p) for p in parts)

    def shard_of(self, guild_id: int) -> int:
        return (guild_id >> 22) % self.shard_count

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.load_configs()
        self.buffer.start()
        loop = asyncio.get_running_loop()
        for coro in (
            self._coordinate(),
            self._watch_leases(),
            self._refresh_configs(),
            self._expire_voice(),
            self._write_meta(),
            self.snapshots.run(),
            self.fleet.run(),
        ):
            self._tasks.append(loop.create_task(coro))

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def shutdown(self) -> bool:
        """Close every shard resumably, flush everything, release leases, leave. Returns
        False if the grace period ran out with rows unflushed."""
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Keep the leases alive while the shards close and flush: their state writes are
        # fenced by the lease, and nobody may open a shard before it is closed here.
        renewer = asyncio.get_running_loop().create_task(self._renew_until_released())
        await self.backfiller.cancel()

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        await asyncio.gather(
            *(self._stop_shard(s, left()) for s in list(self.runners)), return_exceptions=True
        )
        ok = await self.buffer.close(left())
        renewer.cancel()
        with contextlib.suppress(Exception):
            await self.coordinator.leave()
        metrics.SHARDS_OWNED.set(0)
        return ok

    # -- coordination ---------------------------------------------------------------------
    async def _coordinate(self) -> None:
        interval = self.settings.member_heartbeat_seconds
        while not self._stopping.is_set():
            converged = True
            try:
                converged = await self._coordinate_once()
            except Exception as exc:
                log.warning("coordination failed: %s: %s", type(exc).__name__, exc)
                self._fence_expired()
                converged = False  # retry soon: one lost round must not cost the leases
            # Poll faster while a wanted shard is still held by its previous owner.
            wait = interval if converged else min(interval, 0.25)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def _coordinate_once(self) -> bool:
        ttl = self.settings.member_ttl_seconds
        self.members = await self.coordinator.heartbeat()
        metrics.MEMBERS_LIVE.set(len(self.members))
        self.desired = self.fleet.desired(assigned_shards(self.members, self.pod, self.shard_count))
        # Renew first: a lease we lost means the shard must close now.
        for shard_id, runner in list(self.runners.items()):
            sent = time.monotonic()  # Redis counts the new TTL from no earlier than this
            if await self.coordinator.renew(shard_id, runner.token, ttl):
                if shard_id in self.runners and shard_id not in self._fencing:
                    self._lease_renewed[shard_id] = sent
            else:
                log.warning("lost the lease of shard %s; closing it", shard_id)
                await self._stop_shard(shard_id, ttl, release=False)
        for shard_id in sorted(set(self.runners) - self.desired):
            log.info("shard %s now belongs elsewhere; handing it over", shard_id)
            await self._stop_shard(shard_id, ttl)
        for shard_id in sorted(self._failed & set(self.runners)):
            await self._stop_shard(shard_id, ttl)
        self._failed.clear()
        converged = True
        for shard_id in sorted(self.desired - set(self.runners)):
            sent = time.monotonic()
            token = await self.coordinator.acquire(shard_id, ttl)
            if token is None:
                converged = False
                continue
            self._lease_renewed[shard_id] = sent
            runner = ShardRunner(self, shard_id, token)
            self.runners[shard_id] = runner
            try:
                await runner.start()
            except Exception:
                log.exception("shard %s failed to start", shard_id)
                await self._stop_shard(shard_id, ttl)
                converged = False
        metrics.SHARDS_OWNED.set(len(self.runners))
        for shard_id, runner in self.runners.items():
            c = runner.client
            if c is not None and c.ws is not None:
                metrics.SHARD_LATENCY.labels(str(shard_id)).set(c.ws.latency)
        return converged

    async def _renew_until_released(self) -> None:
        ttl = self.settings.member_ttl_seconds
        while self.runners:
            for shard_id, runner in list(self.runners.items()):
                with contextlib.suppress(Exception):
                    await self.coordinator.renew(shard_id, runner.token, ttl)
            await asyncio.sleep(self.settings.member_heartbeat_seconds)

    async def _watch_leases(self) -> None:
        """Self-fencing that needs no answer from Redis: a Redis that stops answering (packets
        dropped, nothing closed) hangs the coordination loop for a whole call timeout."""
        tick = min(0.25, self.settings.member_ttl_seconds / 20)
        while not self._stopping.is_set():
            self._fence_expired()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), tick)

    def _fence_expired(self) -> None:
        """Close every shard whose lease may lapse before a renewal can still reach Redis."""
        ttl = self.settings.member_ttl_seconds
        now = time.monotonic()
        for shard_id in list(self.runners):
            renewed = self._lease_renewed.get(shard_id)
            if renewed is None or shard_id in self._fencing:
                continue
            if now - renewed > ttl * FENCE_AFTER:
                log.warning(
                    "lease of shard %s not renewed for %.1fs; closing it",
                    shard_id,
                    now - renewed,
                )
                self._fencing.add(shard_id)
                task = asyncio.get_running_loop().create_task(
                    self._stop_shard(shard_id, ttl, release=False)
                )
                task.add_done_callback(functools.partial(self._fenced, shard_id))

    def _fenced(self, shard_id: int, _task: asyncio.Task[None]) -> None:
        self._fencing.discard(shard_id)

    async def _stop_shard(self, shard_id: int, timeout: float, *, release: bool = True) -> None:
        runner = self.runners.get(shard_id)
        if runner is None:
            return
        await self.backfiller.cancel_shard(shard_id)
        try:
            await runner.stop(timeout)
            await self.fleet.shard_stopped(runner)
        finally:
            self.runners.pop(shard_id, None)
            self._lease_renewed.pop(shard_id, None)
            if release:
                with contextlib.suppress(Exception):
                    await self.coordinator.release(shard_id, runner.token)
            metrics.SHARDS_OWNED.set(len(self.runners))

    def shard_failed(self, runner: ShardRunner) -> None:
        self._failed.add(runner.shard_id)

    # -- shard state in Redis / Postgres --------------------------------------------------
    async def load_shard_state(self, runner: ShardRunner) -> Json | None:
        """Take the shard's Postgres fence and load its voice sessions, member counts,
        channels and the committed gateway session (if any) to RESUME."""
        sid = runner.shard_id
        shard_guilds = "(guild_id >> 22) % $1 = $2"
        async with self.pool.acquire() as conn, conn.transaction():
            # A shard taken over honours a deletion its previous owner answered just now.
            await self.tombstones.load(conn)
            gw = await conn.fetchrow(
                "INSERT INTO bot_gateway_marks (shard_count, shard_id) VALUES ($1, $2) "
                "ON CONFLICT (shard_count, shard_id) DO UPDATE "
                "SET epoch = bot_gateway_marks.epoch + 1, updated_at = now() "
                "RETURNING epoch, session_id, seq, resume_url, alive_at",
                self.shard_count,
                sid,
            )
            if gw is None:  # an upsert's RETURNING always yields its row
                raise RuntimeError(f"shard {sid}: no gateway mark row after the upsert")
            runner.epoch = int(gw["epoch"])
            sessions: dict[int, dict[bytes, bytes]] = defaultdict(dict)
            for row in await conn.fetch(
                f"SELECT guild_id, user_id, state::text AS state FROM bot_voice_open "  # noqa: S608
                f"WHERE {shard_guilds}",
                self.shard_count,
                sid,
            ):
                sessions[row["guild_id"]][str(row["user_id"]).encode()] = row["state"].encode()
            for gid, raw in sessions.items():
                # A deleted server's open sessions stay behind: closing them would record them.
                if gid not in self.tombstones:
                    self.voice.load(gid, raw)
            for row in await conn.fetch(
                f"SELECT guild_id, member_count FROM bot_member_counts WHERE {shard_guilds}",  # noqa: S608
                self.shard_count,
                sid,
            ):
                self.directory.member_counts[row["guild_id"]] = row["member_count"]
            # A shard that RESUMEs gets no GUILD_CREATE: its guilds come from Postgres. The
            # guilds rows are written apart from the mark (the metadata queue), so a GUILD_CREATE
            # the mark covers may have no row yet; its member count commits with the mark.
            known = await conn.fetch(
                "SELECT guild_id FROM guilds WHERE left_at IS NULL AND (guild_id >> 22) % $1 = $2 "
                "UNION SELECT m.guild_id FROM bot_member_counts m "
                "WHERE (m.guild_id >> 22) % $1 = $2 "
                "AND NOT EXISTS (SELECT 1 FROM guilds g WHERE g.guild_id = m.guild_id)",
                self.shard_count,
                sid,
            )
            runner.guilds.update(r["guild_id"] for r in known)
            rows = await conn.fetch(
                "SELECT c.channel_id, c.guild_id, c.parent_id, c.name, c.kind FROM channels c "
                "JOIN guilds g USING (guild_id) WHERE g.left_at IS NULL "
                "AND (c.guild_id >> 22) % $1 = $2",
                self.shard_count,
                sid,
            )
        kinds = {
            "text": 0,
            "voice": 2,
            "category": 4,
            "news": 5,
            "stage": 13,
            "forum": 15,
            "thread": 11,
        }
        for row in rows:
            self.directory.add_channel(
                row["guild_id"],
                {
                    "id": row["channel_id"],
                    "type": kinds.get(row["kind"], 0),
                    "parent_id": row["parent_id"],
                    "name": row["name"],
                },
            )
        if gw["session_id"] is None:
            return None
        alive = gw["alive_at"]
        return {
            "session_id": gw["session_id"],
            "seq": int(gw["seq"]),
            "resume_url": _url(gw["resume_url"]),
            "alive": alive.timestamp() if alive is not None else time.time(),
        }

    def _marks(self) -> dict[int, Mark]:
        out: dict[int, Mark] = {}
        for sid, runner in self.runners.items():
            m = runner.mark()
            if m is not None:
                out[sid] = m
        return out

    async def _in_commit(self, conn: Any, batch: Batch) -> None:
        """Inside the batch's transaction: advance each shard's gateway mark and apply its
        open voice sessions, member counts and pending backfills, fenced by the shard's epoch.
        A shard whose epoch has moved on (a newer owner loaded its mark) writes no state and
        leaves its receive-time-keyed rows to that owner."""
        voice: dict[int, dict[tuple[int, int], bytes | None]] = defaultdict(dict)
        counts: dict[int, dict[int, int]] = defaultdict(dict)
        backfills: dict[int, list[BackfillOp]] = defaultdict(list)
        for extra in batch.extras:
            if isinstance(extra, VoiceOp):
                voice[extra.shard_id][(extra.guild_id, extra.user_id)] = extra.session
            elif isinstance(extra, MemberCountOp):
                counts[extra.shard_id][extra.guild_id] = extra.count
            elif isinstance(extra, BackfillOp):
                backfills[extra.shard_id].append(extra)
        marks: dict[int, Mark] = batch.marks or {}
        fenced: set[int] = set()  # a newer owner took over: neither state nor rows
        skipped: set[int] = set()  # no runner any more: its state is not this pod's to write
        # Sorted: every pod locks mark rows in one order, so two flushes cannot deadlock.
        for sid in sorted(set(voice) | set(counts) | set(backfills) | set(marks)):
            mark = marks.get(sid)
            runner = self.runners.get(sid)
            epoch = mark.epoch if mark else (runner.epoch if runner else None)
            if epoch is None:
                skipped.add(sid)
                continue
            status = await conn.execute(
                "UPDATE bot_gateway_marks SET session_id = coalesce($4, session_id), "
                "seq = coalesce($5, seq), resume_url = coalesce($6, resume_url), "
                "alive_at = CASE WHEN $4::text IS NULL THEN alive_at ELSE now() END, "
                "updated_at = now() "
                "WHERE shard_count = $1 AND shard_id = $2 AND epoch = $3",
                self.shard_count,
                sid,
                epoch,
                mark.session_id if mark else None,
                mark.seq if mark else None,
                mark.resume_url if mark else None,
            )
            if rows_affected(status) == 0:
                fenced.add(sid)
        if fenced:
            self._drop_fenced(batch, fenced)
        stateless = fenced | skipped
        closed = sorted(
            (gid, uid)
            for sid, ops in voice.items()
            if sid not in stateless
            for (gid, uid), session in ops.items()
            if session is None
        )
        opened = sorted(
            (gid, uid, session.decode())
            for sid, ops in voice.items()
            if sid not in stateless
            for (gid, uid), session in ops.items()
            if session is not None
        )
        if closed:
            await conn.executemany(
                "DELETE FROM bot_voice_open WHERE guild_id = $1 AND user_id = $2", closed
            )
        if opened:
            await conn.executemany(
                "INSERT INTO bot_voice_open (guild_id, user_id, state) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (guild_id, user_id) DO UPDATE SET state = EXCLUDED.state",
                opened,
            )
        member_counts = sorted(
            (gid, count)
            for sid, by_guild in counts.items()
            if sid not in stateless
            for gid, count in by_guild.items()
        )
        if member_counts:
            await conn.executemany(
                "INSERT INTO bot_member_counts (guild_id, member_count) VALUES ($1, $2) "
                "ON CONFLICT (guild_id) DO UPDATE SET member_count = EXCLUDED.member_count, "
                "updated_at = now()",
                member_counts,
            )
        pending = [op for sid, ops in backfills.items() if sid not in stateless for op in ops]
        started = sorted((op.guild_id, op.until) for op in pending if not op.done)
        finished = sorted((op.guild_id, op.until) for op in pending if op.done)
        if started:
            await conn.executemany(
                "INSERT INTO bot_backfill_pending (guild_id, until_id) VALUES ($1, $2) "
                "ON CONFLICT (guild_id) DO UPDATE SET "
                "until_id = greatest(bot_backfill_pending.until_id, EXCLUDED.until_id), "
                "updated_at = now()",
                started,
            )
        if finished:
            # A later backfill of the same guild (a newer GUILD_CREATE) stays pending.
            await conn.executemany(
                "DELETE FROM bot_backfill_pending WHERE guild_id = $1 AND until_id <= $2",
                finished,
            )

    def _drop_fenced(self, batch: Batch, fenced: set[int]) -> None:
        """Leave out the receive-time-keyed rows of shards this pod no longer owns: their
        new owner RESUMEs from the committed mark, receives these events again and stages
        them under keys of its own. Rows keyed by Discord's ids and times are kept: the
        replay merges with them, and keeping them loses nothing if the session cannot be
        resumed."""
        log.warning("shards %s moved to a newer owner; leaving their rows to it", sorted(fenced))
        for table, rows in list(batch.rows.items()):
            keyed_by_receipt = _RECEIVE_TIME_KEYED.get(table)
            if keyed_by_receipt is None:
                continue
            col = _GUILD_COLUMN[table]
            kept = [
                r for r in rows if self.shard_of(r[col]) not in fenced or not keyed_by_receipt(r)
            ]
            metrics.ROWS_FENCED.labels(table).inc(len(rows) - len(kept))
            if kept:
                batch.rows[table] = kept
            else:
                del batch.rows[table]

    async def _after_commit(self, batch: Batch) -> None:
        metrics.VOICE_OPEN.set(self.voice.open_count())

    # -- guild hooks (called from parsers: schedule, never block) -------------------------
    def guild_available(self, runner: ShardRunner, d: Json) -> None:
        self._meta.put_nowait(("guild", d))
        if self.settings.backfill_enabled:
            self.backfiller.schedule(runner, int(d["id"]))

    def guild_left(self, guild_id: int) -> None:
        self._meta.put_nowait(("left", guild_id))

    def channel_changed(self, guild_id: int, d: Json) -> None:
        self._meta.put_nowait(("channel", (guild_id, d)))

    async def _write_meta(self) -> None:
        """Guild and channel metadata upserts (rare, off the hot path), retried until done.
        Only an outage is retried: a row Postgres refuses is set aside (``dead_letter_rows``)
        and an item that cannot be read is counted and skipped, so one bad name never holds
        back the metadata queued behind it."""
        while True:
            kind, item = await self._meta.get()
            backoff = 0.1
            while True:
                try:
                    async with self.pool.acquire() as conn:
                        await _upsert_meta(conn, kind, item, self.settings)
                    break
                except Exception as exc:
                    if refused(exc):
                        rejected(f"metadata:{kind}", "malformed")
                        break
                    log.warning("metadata write failed, retrying: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    # -- periodic -------------------------------------------------------------------------
    async def load_configs(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT guild_id, tracked_channel_ids, count_bot_messages, snapshot_hour_utc "
                "FROM guilds"
            )
            await self.tombstones.load(conn)
        self.directory.configs = {
            r["guild_id"]: GuildConfig(
                frozenset(r["tracked_channel_ids"])
                if r["tracked_channel_ids"] is not None
                else None,
                bool(r["count_bot_messages"]),
                r["snapshot_hour_utc"],
            )
            for r in rows
        }

    async def _refresh_configs(self) -> None:
        # /config notifies on CONFIG_CHANNEL when it commits, so a change applies at once; the
        # periodic reload covers notifications lost with a dropped listening connection.
        changed = asyncio.Event()

        def notified(*_: object) -> None:
            changed.set()

        while True:
            try:
                async with self.pool.acquire() as conn:
                    await conn.add_listener(CONFIG_CHANNEL, notified)
                    try:
                        while True:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(changed.wait(), 30.0)
                            changed.clear()
                            await self.load_configs()
                    finally:
                        await conn.remove_listener(CONFIG_CHANNEL, notified)
            except Exception as exc:
                log.warning("guild settings refresh failed: %s", exc)
                await asyncio.sleep(5.0)

    async def _expire_voice(self) -> None:
        while True:
            await asyncio.sleep(60.0)
            rows, ops = self.voice.expire(time.time(), self.shard_of)
            self.buffer.add_many("voice_sessions", rows)
            for op in ops:
                self.buffer.add_extra(op)

    # -- readiness ------------------------------------------------------------------------
    async def readiness(self) -> Readiness:
        owned = set(self.runners)
        connected = {s for s, r in self.runners.items() if r.connected}
        flushing = self.buffer.failing_since is None
        ready = (
            bool(self.desired)
            and owned == self.desired
            and connected == owned
            and flushing
            and not self._stopping.is_set()
        )
        return Readiness(
            ready,
            {
                "pod": self.pod,
                "members": self.members,
                "shards_desired": sorted(self.desired),
                "shards_owned": sorted(owned),
                "shards_connected": sorted(connected),
                "buffer_depth": self.buffer.depth,
                "flushing": flushing,
                "fleet": self.fleet.describe(),
            },
        )


def _url(raw: str) -> Any:
    import yarl

    return yarl.URL(raw)


_CHANNEL_KINDS = {
    0: "text",
    2: "voice",
    4: "category",
    5: "news",
    13: "stage",
    15: "forum",
    10: "thread",
    11: "thread",
    12: "thread",
}


# The metadata tables' dead-letter series exist from the start, like the staging tables' ones
# (an alert on increase() misses a series whose first sample is already 1).
for _table in ("guilds", "channels"):
    metrics.DEAD_LETTER_ROWS.labels(_table)

_GUILD_COLUMNS = ("guild_id", "name", "joined_at", "snapshot_hour_utc", "count_bot_messages")
_GUILD_UPSERT = (
    "INSERT INTO guilds (guild_id, name, joined_at, snapshot_hour_utc, "
    "count_bot_messages) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (guild_id) DO UPDATE SET name = EXCLUDED.name, "
    "joined_at = COALESCE(guilds.joined_at, EXCLUDED.joined_at), left_at = NULL, "
    "updated_at = now()"
)
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


async def _upsert_meta(conn: Any, kind: str, item: Any, settings: BotSettings) -> None:
    if kind == "guild":
        d: Json = item
        gid = int(d["id"])
        joined = d.get("joined_at")
        # A new guild starts with the pod's defaults; from then on its row is the authority.
        await _write_rows(
            conn,
            "guilds",
            _GUILD_UPSERT,
            _GUILD_COLUMNS,
            [
                (
                    gid,
                    d.get("name"),
                    datetime.fromisoformat(joined) if joined else None,
                    settings.snapshot_hour_utc,
                    settings.count_bot_messages,
                )
            ],
        )
        channels = [*d.get("channels", ()), *d.get("threads", ())]
        await _upsert_channels(conn, gid, channels)
    elif kind == "channel":
        gid, c = item
        await _upsert_channels(conn, gid, [c])
    elif kind == "left":
        await conn.execute(
            "UPDATE guilds SET left_at = now(), updated_at = now() WHERE guild_id = $1", int(item)
        )


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
                _CHANNEL_KINDS.get(int(c.get("type", 0)), "other"),
            )
            for c in channels
        ],
    )


def install_signal_handlers(app: BotApp) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
