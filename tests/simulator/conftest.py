"""Real discord.py clients against a real simulator over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import discord
import orjson
import pytest

from herwa.json_types import Json
from herwa.simulator import Simulator, SimulatorConfig, point_discord_at
from herwa.simulator.client import restore_discord_defaults


class Recorder:
    """Collects every gateway dispatch a client receives, before discord.py's cache sees it."""

    def __init__(self) -> None:
        self.events: list[Json] = []
        self.changed = asyncio.Event()

    def feed(self, raw: str | bytes) -> None:
        msg = orjson.loads(raw)
        if msg.get("op") == 0 or msg.get("op") == 9:
            self.events.append(msg)
            self.changed.set()

    def of(self, t: str) -> list[Json]:
        return [e["d"] for e in self.events if e.get("t") == t]

    def ops(self, op: int) -> list[Json]:
        return [e for e in self.events if e.get("op") == op]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for gateway events")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))


def intents(*, members: bool = True, content: bool = True) -> discord.Intents:
    i = discord.Intents.default()
    i.members = members
    i.message_content = content
    return i


class Bot:
    """A discord.py client running as a task, with a raw recorder and a ready event."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self.raw = Recorder()
        self.ready = asyncio.Event()
        self.messages: list[discord.Message] = []
        self.task: asyncio.Task[None] | None = None

        @client.event
        async def on_socket_raw_receive(msg: str | bytes) -> None:
            self.raw.feed(msg)

        @client.event
        async def on_ready() -> None:
            self.ready.set()

        @client.event
        async def on_message(message: discord.Message) -> None:
            self.messages.append(message)

    async def start(self, token: str, *, wait_ready: bool = True, timeout: float = 15.0) -> None:
        self.task = asyncio.create_task(self.client.start(token))
        if wait_ready:
            done, _ = await asyncio.wait(
                {self.task, asyncio.ensure_future(self.ready.wait())},
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.task in done:
                self.task.result()  # raises what the client raised
            if not self.ready.is_set():
                raise AssertionError("client never became ready")

    async def close(self) -> None:
        await self.client.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)


def make_client(cls: type[discord.Client] = discord.Client, **kwargs: Any) -> discord.Client:
    kwargs.setdefault("intents", intents())
    kwargs.setdefault("chunk_guilds_at_startup", False)
    kwargs.setdefault("guild_ready_timeout", 0.2)
    kwargs.setdefault("enable_debug_events", True)
    return cls(**kwargs)


SimFactory = Callable[..., Coroutine[Any, Any, Simulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    sims: list[Simulator] = []

    async def factory(**overrides: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(), **overrides)
        await sim.start()
        sims.append(sim)
        point_discord_at(sim.api_base, sim.ws_url)
        return sim

    yield factory
    for sim in sims:
        await sim.stop()
    restore_discord_defaults()


@pytest.fixture
async def bots() -> AsyncIterator[list[Bot]]:
    started: list[Bot] = []
    yield started
    for b in started:
        await b.close()


def now_ms() -> int:
    return int(time.time() * 1000)
