"""The bot pod: stores, buffer, coordination loop, shard runners, telemetry, shutdown.

Shard state lives in Postgres, written with the rows it describes (:mod:`herwa.bot.shard_state`);
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

import asyncpg
from redis.asyncio import Redis

from herwa.bot import guild_settings, metrics
from herwa.bot.backfill import Backfiller
from herwa.bot.buffer import Batch, FlushBuffer
from herwa.bot.commands import CommandDeps
from herwa.bot.deps import ShardDeps
from herwa.bot.directory import Directory
from herwa.bot.generations import Generations
from herwa.bot.metadata import MetadataWriter
from herwa.bot.presence import PresenceGrants
from herwa.bot.shard import ShardRunner
from herwa.bot.shard_state import Mark, ShardState, shard_of
from herwa.bot.sharding import Coordinator, assigned_shards
from herwa.bot.snapshots import Snapshotter
from herwa.bot.tombstones import Tombstones
from herwa.bot.voice import VoiceTracker
from herwa.config import BotSettings, DiscordSettings
from herwa.telemetry import Readiness

log = logging.getLogger(__name__)
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
        guild_timezone: str = "UTC",
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
        # What a guild without its own settings gets, and a new guild's row starts with.
        guild_defaults = guild_settings.bot_defaults(settings, guild_timezone)
        self.directory = Directory(guild_defaults)
        self.voice = VoiceTracker(self.directory, settings.voice_session_max_hours)
        self.presence = PresenceGrants(
            settings.presence_capture, settings.presence_members_per_guild
        )
        # Deleted servers: shared with the commands, which apply /privacy at once.
        self.tombstones = commands.tombstones if commands is not None else Tombstones()
        self.tombstones.on_deleted = self.voice.drop_guilds
        self.state = ShardState(
            pool,
            shard_count=shard_count,
            directory=self.directory,
            voice=self.voice,
            tombstones=self.tombstones,
            epoch_of=self._epoch_of,
        )
        self.buffer = FlushBuffer(
            pool,
            interval=settings.flush_interval_seconds,
            max_rows=settings.flush_max_rows,
            capacity=settings.buffer_max_rows,
            after_commit=self._after_commit,
            in_commit=self.state.in_commit,
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
        self.metadata = MetadataWriter(pool, guild_defaults)
        self.backfiller = Backfiller(
            pool,
            self.buffer,
            self.directory,
            self.tombstones,
            self.metadata,
            shard_count=shard_count,
            window_hours=settings.backfill_window_hours,
            message_content=discord_settings.message_content_intent,
        )
        self.snapshots = Snapshotter(
            pool,
            self.directory,
            self.tombstones,
            guilds=self.connected_guilds,
        )
        # Which shard count records (resharding).
        self.fleet = Generations(
            self,
            pool=pool,
            coordinator=self.coordinator,
            settings=settings,
            token=token,
            directory=self.directory,
            voice=self.voice,
            buffer=self.buffer,
        )
        self.shard_deps = ShardDeps(
            settings=settings,
            token=token,
            shard_count=shard_count,
            message_content=discord_settings.message_content_intent,
            buffer=self.buffer,
            directory=self.directory,
            voice=self.voice,
            tombstones=self.tombstones,
            state=self.state,
            metadata=self.metadata,
            backfiller=self.backfiller,
            identify_slot=self.coordinator.identify_slot,
            failed=self.shard_failed,
            fleet=self.fleet,
            presence=self.presence,
            commands=commands,
        )
        self.runners: dict[int, ShardRunner] = {}
        self.desired: set[int] = set()
        self.members: list[str] = []
        self._lease_renewed: dict[int, float] = {}  # monotonic time the last renewal was sent
        self._fencing: set[int] = set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: set[int] = set()

    # -- keys -----------------------------------------------------------------------------
    def key(self, *parts: object) -> str:
        return self.prefix + "bot:" + ":".join(str(p) for p in parts)

    def shard_of(self, guild_id: int) -> int:
        return shard_of(guild_id, self.shard_count)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.load_configs()
        self.buffer.start()
        loop = asyncio.get_running_loop()
        for coro in (
            self._coordinate(),
            self._watch_leases(),
            guild_settings.follow(self.pool, self.load_configs),
            self._expire_voice(),
            self.metadata.run(),
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
        await self._renew_leases(ttl)
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
            # Starting a shard waits for its identify slot (one per bucket per window), so a
            # round that starts many outlasts the leases renewed at its beginning: renew the
            # ones a third of the way to their end before each start, or they would fence.
            await self._renew_leases(ttl, older_than=ttl / 3)
            runner = ShardRunner(self.shard_deps, shard_id, token)
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

    async def _renew_leases(self, ttl: float, *, older_than: float = 0.0) -> None:
        """Renew the leases of the shards this pod runs (those last renewed at least
        ``older_than`` seconds ago); a shard whose lease was lost is closed."""
        now = time.monotonic()
        for shard_id, runner in list(self.runners.items()):
            if now - self._lease_renewed.get(shard_id, now) < older_than:
                continue
            sent = time.monotonic()  # Redis counts the new TTL from no earlier than this
            if await self.coordinator.renew(shard_id, runner.token, ttl):
                if shard_id in self.runners and shard_id not in self._fencing:
                    self._lease_renewed[shard_id] = sent
            else:
                log.warning("lost the lease of shard %s; closing it", shard_id)
                await self._stop_shard(shard_id, ttl, release=False)

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

    def shard_failed(self, shard_id: int) -> None:
        self._failed.add(shard_id)

    def connected_guilds(self) -> list[int]:
        """The guilds of this pod's connected shards."""
        return [
            gid
            for runner in list(self.runners.values())
            if runner.connected
            for gid in list(runner.guilds)
        ]

    def _epoch_of(self, shard_id: int) -> int | None:
        runner = self.runners.get(shard_id)
        return runner.epoch if runner is not None else None

    def _marks(self) -> dict[int, Mark]:
        out: dict[int, Mark] = {}
        for sid, runner in self.runners.items():
            m = runner.mark()
            if m is not None:
                out[sid] = m
        return out

    async def _after_commit(self, batch: Batch) -> None:
        metrics.VOICE_OPEN.set(self.voice.open_count())

    # -- periodic -------------------------------------------------------------------------
    async def load_configs(self) -> None:
        async with self.pool.acquire() as conn:
            configs = await guild_settings.load_all(conn)
            await self.tombstones.load(conn)
            await self.presence.load(conn)
        self.directory.configs = configs

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


def install_signal_handlers(app: BotApp) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
