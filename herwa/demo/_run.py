"""What the demo's stages share: its options, the services it started and what it found."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from herwa.demo._bots import BotProcess
from herwa.demo._checks import Check
from herwa.demo._console import Console
from herwa.devstack import DevStack, Endpoints
from herwa.json_types import Json
from herwa.simulator import Simulator

REDIS_PREFIX = "herwa:"  # the bots' and the ETL's default key prefix


@dataclass(frozen=True)
class DemoOptions:
    guilds: int
    history_days: float
    messages_per_day: int
    duration: float
    rate: float
    data_dir: Path
    results: Path
    reset: bool
    keep_running: bool
    seed: int
    # The showcase server (0 members: none), its channel history per day and its weeks of
    # newcomers; the CI test runs a small one.
    showcase_members: int = 3000
    showcase_messages_per_day: int = 2500
    showcase_weeks: int = 8


class DemoFailed(RuntimeError):
    """A stage could not finish; the message says what was expected."""


class DemoRun:
    """One demo run's state: each stage reads what the stages before it set up."""

    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.stack: DevStack | None = None
        self.endpoints: Endpoints | None = None
        self.server_pids: dict[str, int] = {}
        self.sim: Simulator | None = None
        self.bots: list[BotProcess] = []
        self.pool: asyncpg.Pool | None = None
        self.redis: Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self.checks: list[Check] = []
        self.commands: list[Json] = []
        self.images: dict[str, str] = {}
        self.etl_rows: dict[str, int] = {}
        self.entitled: dict[int, str] = {}
        # guild → (UTC day, member count) when the bots took their snapshots (before traffic).
        self.snapshots: dict[int, tuple[date, int]] = {}
        # The showcase's daily snapshots (UTC day → member count), see _live.showcase_snapshots.
        self.showcase_counts: dict[date, int] = {}
        self.started_at = datetime.now(UTC)
        self.bots_started = 0.0
        self.stopping = False

    async def wait(self, pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(interval)

    def require_ep(self) -> Endpoints:
        if self.endpoints is None:
            raise RuntimeError("endpoints used before its stage ran")
        return self.endpoints

    def require_sim(self) -> Simulator:
        if self.sim is None:
            raise RuntimeError("sim used before its stage ran")
        return self.sim

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("pool used before its stage ran")
        return self.pool

    def require_http(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("http used before its stage ran")
        return self.http
