"""The simulator as one object: world, gateway, REST, scenario engine, ledger, control API."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import socket
import time
import zoneinfo
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from herwa.json_types import Json
from herwa.simulator._activity import Activity, ScenarioConfig
from herwa.simulator._app import AppState
from herwa.simulator._command_options import focused_option
from herwa.simulator._control import Control
from herwa.simulator._faults import inject
from herwa.simulator._gateway import (
    GUILD_MEMBERS,
    GUILD_PRESENCES,
    MESSAGE_CONTENT,
    Gateway,
    GatewayConfig,
    Prepared,
    Session,
)
from herwa.simulator._history import History
from herwa.simulator._interactions import InteractionStore
from herwa.simulator._ledger import Ledger
from herwa.simulator._rest import API_PREFIX, RateLimit, Rest
from herwa.simulator._showcase import (
    rhythmic_times,
    showcase_history_message,
    showcase_newcomers,
)
from herwa.simulator._snowflake import SnowflakeFactory
from herwa.simulator._world import ADMIN_PERMISSIONS, TEXT, User, World, WorldConfig

# Not a secret: the simulator accepts exactly this made-up token unless told otherwise.
DEFAULT_TOKEN = "SIMULATED.bot-token.herwa"  # noqa: S105
_DAY_MS = 86_400_000
# Above this many bytes queued on any connection the pump waits: TCP-style backpressure, so the
# rate a benchmark sees is what the slowest consumer can take.
_HIGH_WATER = 4 * 1024 * 1024


@dataclass
class SimulatorConfig:
    seed: int = 1
    guilds: int = 3
    token: str = DEFAULT_TOKEN
    application_id: int = 0  # 0: derived from the seed
    host: str = "127.0.0.1"
    port: int = 0
    privileged_intents: int = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
    recommended_shards: int | None = None
    history_rate: tuple[int, float] = (50, 1.0)
    record_deliveries: bool = True
    store_history: bool = True
    world: WorldConfig | None = None
    scenario: ScenarioConfig | None = None
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    # Where the websocket is served; GET /gateway/bot announces it, as Discord announces its
    # gateway host, which is not the REST host.
    gateway_path: str = "/gateway"


class Simulator:
    """A local Discord for the real discord.py client.

    ``async with Simulator(SimulatorConfig(guilds=4)) as sim:`` binds 127.0.0.1 on a free port;
    ``sim.env()`` gives the settings a bot needs to connect to it.
    """

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        cfg = config or SimulatorConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown simulator option {k!r}")
            setattr(cfg, k, v)
        if cfg.host not in ("127.0.0.1", "localhost"):
            raise ValueError("the simulator only binds the loopback interface")
        self.config = cfg
        ids = SnowflakeFactory(worker=4)
        app_id = cfg.application_id or ids.make(1_500_000_000_000 + cfg.seed)
        bot = User(app_id, "herwa", None, bot=True)
        self.app = AppState(cfg.token, app_id, bot, cfg.privileged_intents)
        world_cfg = cfg.world or WorldConfig(guilds=cfg.guilds)
        scenario = cfg.scenario or ScenarioConfig(seed=cfg.seed)
        self.world = World(world_cfg, random.Random(scenario.seed), bot)
        self.ledger = Ledger(record_deliveries=cfg.record_deliveries)
        self.history = History(enabled=cfg.store_history)
        self.interactions = InteractionStore()
        self.gateway = Gateway(self.app, self.world, self.ledger, cfg.gateway)
        self.gateway.on_member_request = self._member_chunks
        self.activity = Activity(
            world=self.world,
            app=self.app,
            gateway=self.gateway,
            ledger=self.ledger,
            history=self.history,
            interactions=self.interactions,
            config=scenario,
        )
        self.rest = Rest(self, RateLimit(*cfg.history_rate))
        self.url = ""
        self.ws_url = ""
        self._runner: web.AppRunner | None = None
        self._pump: asyncio.Task[None] | None = None
        self.rate = 0.0
        self._replay: tuple[int, float, float] | None = None  # (start ms, speed, t0 monotonic)
        for g in self.world.guilds.values():
            self.ledger.member_count(g.id, int(time.time() * 1000), len(g.members))

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> Simulator:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        path = "/" + self.config.gateway_path.strip("/")
        app.router.add_get(path, self.gateway.handle)
        app.router.add_get(path + "/", self.gateway.handle)
        app.router.add_routes(Control(self).routes())
        app.router.add_routes(self.rest.routes())
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.config.port))
        port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}{path}"
        self.gateway.ws_url = self.ws_url
        self.gateway.start()
        return self

    async def stop(self) -> None:
        await self.stop_activity()
        await self.gateway.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        return self.url + API_PREFIX

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        """Environment settings that point a Herwa bot at this simulator."""
        return {
            "HERWA_DISCORD_TOKEN": self.config.token,
            "HERWA_DISCORD_API_BASE": self.api_base,
            "HERWA_DISCORD_GATEWAY_URL": self.ws_url,
        }

    # -- world queries ----------------------------------------------------------------------
    def recommended_shards(self) -> int:
        if self.config.recommended_shards:
            return self.config.recommended_shards
        return max(1, math.ceil(len(self.world.guilds) / 1000))

    @staticmethod
    def shard_of(guild_id: int, shard_count: int) -> int:
        return (guild_id >> 22) % shard_count

    def sessions(self) -> list[Session]:
        return list(self.gateway.sessions.values())

    def world_summary(self) -> Json:
        return {
            "application_id": str(self.app.application_id),
            "bot_user_id": str(self.app.bot_user.id),
            "guilds": [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "timezone": g.timezone,
                    "member_count": len(g.members),
                    "channels": [
                        {
                            "id": str(c.id),
                            "type": c.type,
                            "name": c.name,
                            "parent_id": str(c.parent_id) if c.parent_id else None,
                        }
                        for c in g.channels.values()
                    ],
                    "voice": [str(u) for u in g.voice],
                    "members": [str(u) for u in g.members],
                }
                for g in self.world.guilds.values()
            ],
        }

    # -- clock and activity -----------------------------------------------------------------
    def now_ms(self) -> int:
        wall = int(time.time() * 1000)
        if self._replay is None:
            return wall
        start, speed, t0 = self._replay
        virtual = start + int((time.monotonic() - t0) * speed * 1000)
        if virtual >= wall:
            self._replay = None  # history has caught up with the present
            return wall
        return virtual

    def step(
        self, count: int = 1, *, family: str | None = None, at_ms: int | None = None
    ) -> list[str]:
        """Emit ``count`` random events now (or at ``at_ms``); returns their families."""
        return [
            self.activity.step(at_ms if at_ms is not None else self.now_ms(), family=family)
            for _ in range(count)
        ]

    def run_steps(
        self, count: int, *, start_ms: int, step_ms: int, family: str | None = None
    ) -> list[str]:
        """Deterministic: event i happens at ``start_ms + i * step_ms`` (same seed, same
        ledger)."""
        return [self.activity.step(start_ms + i * step_ms, family=family) for i in range(count)]

    async def drain(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # Transports expose their buffer size but signal no "drained" event we could await.
        while self.gateway.backlog() > _HIGH_WATER and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def burst(self, count: int, *, family: str | None = "message", chunk: int = 256) -> float:
        """Emit ``count`` events as fast as the consumers take them; returns events/s."""
        return await self.push_prepared(self.prepare_burst(count, family=family), chunk=chunk)

    def prepare_burst(self, count: int, *, family: str | None = "message") -> list[Prepared]:
        """Generate ``count`` events now (world, ledger and history are updated at once) but
        only serialise them; :meth:`push_prepared` sends them. Separating the two lets a
        benchmark measure delivery rather than Python-level event generation."""
        out: list[Prepared] = []
        self.gateway.capture = out
        try:
            now = self.now_ms()
            for _ in range(count):
                self.activity.step(now, family=family)
        finally:
            self.gateway.capture = None
        return out

    async def push_prepared(self, events: list[Prepared], *, chunk: int = 256) -> float:
        t0 = time.perf_counter()
        send = self.gateway.dispatch_serialized
        for i in range(0, len(events), chunk):
            for p in events[i : i + chunk]:
                send(p)
            await self.drain()
            await asyncio.sleep(0)
        return len(events) / max(1e-9, time.perf_counter() - t0)

    def start_activity(
        self, rate: float, *, replay_from_ms: int | None = None, speed: float = 1.0
    ) -> None:
        """Emit about ``rate`` events per second until stopped. With ``replay_from_ms`` the
        event timestamps start in the past and run ``speed`` times faster than the wall clock
        until they reach the present (weeks of history in minutes)."""
        self.rate = rate
        if replay_from_ms is not None:
            self._replay = (replay_from_ms, speed, time.monotonic())
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    async def stop_activity(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        self._replay = None

    async def _run_pump(self) -> None:
        last = time.monotonic()
        carry = 0.0
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            carry += (now - last) * self.rate
            last = now
            n = int(carry)
            carry -= n
            for _ in range(n):
                self.activity.step(self.now_ms())
            if self.gateway.backlog() > _HIGH_WATER:
                await self.drain()
                carry = 0.0  # backpressure: do not catch up with what the consumer refused

    def create_history(
        self,
        *,
        days: float,
        messages_per_day: int,
        end_ms: int | None = None,
        showcase_per_day: int = 0,
    ) -> int:
        """Messages in the past (ids carry their historic timestamps), reachable only through
        channel history: the bot was not there to receive them. The showcase server, if the
        world has one, gets ``showcase_per_day`` of its own, with its local rhythm, besides
        ``messages_per_day`` for all the others. Returns how many."""
        end = end_ms if end_ms is not None else int(time.time() * 1000) - 60_000
        start = end - int(days * _DAY_MS)
        rng = self.activity.rng
        total = int(days * messages_per_day)
        times = sorted(rng.randrange(start, end) for _ in range(total))
        showcase = self.world.showcase
        if showcase is None or showcase_per_day <= 0:
            for t in times:
                self.activity.historical_message(t)
            return total
        # In one time order with the others': history ids only go forwards.
        count = int(days * showcase_per_day)
        zone = zoneinfo.ZoneInfo(showcase.timezone)
        ours = rhythmic_times(rng, zone, start, end, count)
        merged = heapq.merge(((t, False) for t in times), ((t, True) for t in ours))
        for t, is_showcase in merged:
            if is_showcase:
                showcase_history_message(self.activity, showcase, t)
            else:
                self.activity.historical_message(t)
        return total + count

    async def showcase_newcomers(
        self, *, days: float, joins_per_day: float, end_ms: int | None = None
    ) -> tuple[int, int]:
        """The showcase server's newcomers of the past ``days``: their joins and what they
        wrote while engaged, delivered through the gateway in time order with their past
        timestamps (as fast as the bots take them). Returns (joins, messages)."""
        showcase = self.world.showcase
        if showcase is None:
            raise ValueError("this world has no showcase server")
        end = end_ms if end_ms is not None else self.now_ms()
        out: list[Prepared] = []
        self.gateway.capture = out
        try:
            counts = showcase_newcomers(
                self.activity, showcase, end - int(days * _DAY_MS), end, joins_per_day
            )
        finally:
            self.gateway.capture = None
        await self.push_prepared(out)
        return counts

    # -- faults, commands, tokens -----------------------------------------------------------
    async def inject_fault(self, fault: str, shard_id: int, *, seconds: float = 5.0) -> int:
        return await inject(self.gateway, fault, shard_id, seconds=seconds)

    def revoke_token(self) -> None:
        self.app.revoke(self.app.token)

    def end_voice_sessions(self) -> None:
        """Every member in voice leaves now, so the ledger's closed sessions are all of them."""
        for guild in self.world.guilds.values():
            for user_id in list(guild.voice):
                self.activity.voice_leave(guild.id, user_id, at_ms=self.now_ms())

    async def invoke_command(
        self,
        guild_id: int,
        name: str,
        options: list[Json] | None = None,
        *,
        channel_id: int | None = None,
        user_id: int | None = None,
        timeout: float = 10.0,
        include_bytes: bool = False,
        permissions: int | None = None,
    ) -> Json:
        """Invoke a slash command as a member and wait for the bot's complete response.

        ``permissions`` is the member's permission bit set in the channel (default: all).
        """
        guild = self.world.guilds[guild_id]
        if channel_id is None:
            channel_id = next(c.id for c in guild.channels.values() if c.type == TEXT)
        if user_id is None:
            user_id = guild.owner_id
        rec = self.activity.invoke_command(
            guild_id,
            channel_id,
            user_id,
            name,
            options or [],
            at_ms=self.now_ms(),
            permissions=ADMIN_PERMISSIONS if permissions is None else str(permissions),
        )
        await self.interactions.wait(rec.id, timeout)
        # Follow-ups usually come right after the original; give them a moment.
        await asyncio.sleep(0.05)
        return rec.result(self.interactions.files, include_bytes=include_bytes)

    async def autocomplete(
        self,
        guild_id: int,
        name: str,
        options: list[Json],
        *,
        channel_id: int | None = None,
        user_id: int | None = None,
        timeout: float = 10.0,
        permissions: int | None = None,
    ) -> Json:
        """A member typing in an option: an autocomplete interaction whose ``options`` (as for
        :meth:`invoke_command`, with subcommands) mark the option being typed ``focused``, and
        the bot's answer (``choices``, or why Discord would refuse it in ``invalid``).

        Raises ValueError for what Discord never sends: a command not registered, or a focused
        option that is not exactly one option registered with autocomplete."""
        guild = self.world.guilds[guild_id]
        command = self.app.find_command(name, guild_id)
        if command is None:
            raise ValueError(f"/{name} is not registered")
        focused = focused_option(command, options)
        if channel_id is None:
            channel_id = next(c.id for c in guild.channels.values() if c.type == TEXT)
        rec = self.activity.invoke_command(
            guild_id,
            channel_id,
            user_id if user_id is not None else guild.owner_id,
            name,
            options,
            at_ms=self.now_ms(),
            permissions=ADMIN_PERMISSIONS if permissions is None else str(permissions),
            focused=focused,
        )
        await self.interactions.wait(rec.id, timeout)
        return rec.autocomplete_result()

    def _member_chunks(self, session: Session, d: Json) -> None:
        gids = d.get("guild_id")
        for gid in gids if isinstance(gids, list) else [gids]:
            guild = self.world.guilds.get(int(str(gid)))
            if guild is None or not session.covers(guild.id):
                continue
            members = [m.payload() for m in guild.members.values()]
            limit = int(d.get("limit") or 0)
            if d.get("query"):
                members = [m for m in members if m["user"]["username"].startswith(str(d["query"]))]
            if limit:
                members = members[:limit]
            chunks = [members[i : i + 1000] for i in range(0, len(members), 1000)] or [[]]
            for i, chunk in enumerate(chunks):
                body: Json = {
                    "guild_id": str(guild.id),
                    "members": chunk,
                    "chunk_index": i,
                    "chunk_count": len(chunks),
                    "not_found": [],
                }
                if d.get("nonce"):
                    body["nonce"] = d["nonce"]
                session.push(b"GUILD_MEMBERS_CHUNK", orjson.dumps(body))
