"""Bot processes (``herwa bot``) against an in-process simulator and real Postgres/Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from herwa.bot.sharding import assigned_shards
from herwa.devstack import DevStack, Endpoints
from herwa.schema import migrate
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 4
# Fast coordination for tests; the defaults (5 s heartbeat, 15 s TTL) are for production.
FAST_ENV = {
    "HERWA_BOT_MEMBER_HEARTBEAT_SECONDS": "0.3",
    "HERWA_BOT_MEMBER_TTL_SECONDS": "2.0",
    "HERWA_BOT_IDENTIFY_WINDOW_SECONDS": "0.3",
    "HERWA_BOT_MAX_CONCURRENCY": "1",
    "HERWA_BOT_GUILD_READY_TIMEOUT_SECONDS": "0.2",
    "HERWA_BOT_FLUSH_INTERVAL_SECONDS": "0.2",
    "HERWA_BOT_SHUTDOWN_GRACE_SECONDS": "15",
    "HERWA_DISCORD_SHARD_COUNT": str(SHARDS),
    "HERWA_TELEMETRY_PORT": "0",
    "HERWA_TELEMETRY_HOST": "127.0.0.1",
    "HERWA_TELEMETRY_LOG_FORMAT": "console",
    "OTEL_SDK_DISABLED": "true",
}


def split_names(count: int, shard_count: int = SHARDS) -> list[str]:
    """Pod names such that every one of ``count`` pods gets at least one shard."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        candidate = f"bot-{i}"
        i += 1
        trial = [*names, candidate]
        if all(assigned_shards(trial, n, shard_count) for n in trial):
            names = trial
    return names


class BotProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    async def start(self, timeout: float = 30.0) -> BotProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
            [sys.executable, "-m", "herwa.cli", "bot"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while self.port is None:
            line = await asyncio.wait_for(
                loop.run_in_executor(None, stdout.readline), max(0.1, deadline - time.monotonic())
            )
            if not line:
                raise AssertionError(f"{self.name} exited early: {self.tail()}")
            if line.startswith(b"HERWA_BOT_TELEMETRY_PORT="):
                self.port = int(line.split(b"=", 1)[1])
        return self

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def readyz(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{self.port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as r,
        ):
            data: dict[str, Any] = await r.json()
            return data

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=2)
            ) as r,
        ):
            return await r.text()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"{self.name} did not exit: {self.tail()}"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                await self.wait_exit(20)
            except AssertionError:
                self.signal(signal.SIGKILL)
                await self.wait_exit(5)


async def wait_for(
    pred: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``pred`` until true; returns the seconds it took."""
    started = time.monotonic()
    last_exc: Exception | None = None
    while True:
        try:
            if await pred():
                return time.monotonic() - started
        except Exception as exc:  # a process still starting
            last_exc = exc
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        await asyncio.sleep(interval)


class Fleet:
    """Bot processes sharing one simulator, Postgres and Redis."""

    def __init__(
        self,
        sim: Simulator,
        endpoints: Endpoints,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.sim = sim
        self.endpoints = endpoints
        self.log_dir = log_dir
        self.bots: dict[str, BotProcess] = {}
        self.extra_env = extra_env or {}

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
        env.update(self.endpoints.as_env())
        env.update(self.sim.env())
        env.update(FAST_ENV)
        env.update(self.extra_env)
        env["HERWA_BOT_POD_NAME"] = name
        return env

    async def start(self, name: str) -> BotProcess:
        bot = BotProcess(name, self.env(name), self.log_dir)
        self.bots[name] = bot
        try:
            return await bot.start()
        except Exception:
            await bot.stop()
            raise

    async def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        # A copy: bots are added while this awaits each one (the scaling tests watch as they grow).
        for name, bot in list(self.bots.items()):
            if bot.alive:
                with contextlib.suppress(Exception):
                    out[name] = await bot.readyz()
        return out

    async def all_connected(self, names: list[str] | None = None) -> bool:
        """Every shard connected in exactly one of the named live bots, all of them ready."""
        st = await self.status()
        names = names or [n for n, b in self.bots.items() if b.alive]
        if set(names) - set(st):
            return False
        connected: list[int] = []
        for n in names:
            if not st[n].get("ready"):
                return False
            connected.extend(st[n]["shards_connected"])
        return sorted(connected) == list(range(SHARDS))

    def sim_sessions(self) -> dict[int, int]:
        """Connected gateway sessions per shard, as the simulator sees them."""
        counts = dict.fromkeys(range(SHARDS), 0)
        for s in self.sim.sessions():
            if s.connected:
                counts[s.shard_id] = counts.get(s.shard_id, 0) + 1
        return counts

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in list(self.bots.values())), return_exceptions=True)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=11,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
    )
    async with Simulator(config) as s:
        yield s


@pytest.fixture
async def fleet(sim: Simulator, migrated: Endpoints, tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(sim, migrated, tmp_path)
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
async def own_postgres(
    services: Endpoints, endpoints: Endpoints, tmp_path: Path
) -> AsyncIterator[tuple[DevStack, Endpoints]]:
    """A Postgres of this test's own (the shared one must not be stopped)."""
    stack = DevStack(
        tmp_path / "pg",
        redis_url=services.redis_url,
        clickhouse_url=services.clickhouse_url,
        clickhouse_readonly_url=services.clickhouse_readonly_url,
    )
    ep = await asyncio.to_thread(stack.up)
    await migrate(ep.postgres_dsn, endpoints.clickhouse_url)
    redis_db1 = services.redis_url.rsplit("/", 1)[0] + "/1"
    try:
        yield stack, replace(ep, redis_url=redis_db1)
    finally:
        await asyncio.to_thread(stack.down)


@pytest.fixture
async def own_redis(
    migrated: Endpoints, tmp_path: Path
) -> AsyncIterator[tuple[DevStack, Endpoints]]:
    stack = DevStack(
        tmp_path / "redis",
        postgres_dsn=migrated.postgres_dsn,
        clickhouse_url=migrated.clickhouse_url,
        clickhouse_readonly_url=migrated.clickhouse_readonly_url,
    )
    ep = await asyncio.to_thread(stack.up)
    try:
        yield stack, ep
    finally:
        await asyncio.to_thread(stack.down)


async def pg(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture
async def stores(migrated: Endpoints) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """A pool on the migrated Postgres and a Redis client, as a pod holds them."""
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=4)
    redis = Redis.from_url(migrated.redis_url)
    try:
        yield pool, redis
    finally:
        await pool.close()
        await redis.aclose()
