"""The shard's websocket (``CaptureWebSocket``) against the simulator: recorded events reach
their parser exactly once, in order, with the gateway sequence already advanced; a burst stops
at once when the buffer has no room; the rest still takes discord.py's path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from herwa.bot.client import CaptureClient, CaptureWebSocket
from herwa.discord_api import point_discord_at, restore_discord_defaults
from herwa.simulator import Simulator
from tests.bot.conftest import wait_for


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    async def check() -> bool:
        return pred()

    await wait_for(check, timeout, what)


class Room:
    """The buffer's room as the client sees it: shut after ``limit`` recorded events."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.parsed: list[tuple[int, int | None]] = []  # (message id, ws.sequence then)
        self.open = asyncio.Event()
        self.open.set()

    def has_room(self) -> bool:
        return self.open.is_set()

    async def wait_for_room(self) -> None:
        await self.open.wait()


@pytest.fixture
async def capture(sim: Simulator) -> AsyncIterator[tuple[CaptureClient, Room]]:
    point_discord_at(sim.api_base, sim.ws_url)
    room = Room()

    async def identify(_shard: int) -> None:
        return None

    client = CaptureClient(
        shard_id=0,
        shard_count=1,
        message_content=True,
        guild_ready_timeout=0.2,
        before_identify=identify,
        wait_for_room=room.wait_for_room,
        has_room=room.has_room,
    )

    def message(d: Any) -> None:
        ws = client.ws
        room.parsed.append((int(d["id"]), ws.sequence if ws is not None else None))
        if room.limit is not None and len(room.parsed) >= room.limit:
            room.open.clear()

    client.install_parsers({"MESSAGE_CREATE": message}, {})
    await client.login(sim.config.token)
    task = asyncio.create_task(client.run_gateway())
    try:
        await until(lambda: len(client.guilds) == len(sim.world.guilds), 15, "the GUILD_CREATEs")
        yield client, room
    finally:
        room.open.set()
        await client.stop_gateway()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await client.close()
        restore_discord_defaults()


async def test_recorded_events_parsed_once_in_order_with_their_sequence(
    sim: Simulator, capture: tuple[CaptureClient, Room]
) -> None:
    client, room = capture
    assert isinstance(client.ws, CaptureWebSocket)
    assert client.ws.recorded == frozenset({"MESSAGE_CREATE"})
    # discord.py parsed the GUILD_CREATEs (its own path): the guilds are in its cache.
    assert {g.id for g in client.guilds} == set(sim.world.guilds)
    prepared = sim.prepare_burst(2000, family="message")
    await sim.push_prepared(prepared)
    await until(lambda: len(room.parsed) >= len(prepared), 30, "every message parsed")
    await asyncio.sleep(0.2)
    assert [mid for mid, _ in room.parsed] == [p.key for p in prepared]
    sequences = [seq for _, seq in room.parsed if seq is not None]
    assert len(sequences) == len(prepared)
    assert sequences == sorted(set(sequences))  # advanced before each parse, never repeated
    assert client.ws is not None
    assert client.ws.sequence == sequences[-1]


async def test_a_burst_stops_when_the_buffer_is_full(
    sim: Simulator, capture: tuple[CaptureClient, Room]
) -> None:
    client, room = capture
    room.limit = 50
    prepared = sim.prepare_burst(1000, family="message")
    await sim.push_prepared(prepared)
    await until(lambda: len(room.parsed) >= 50, 30, "the first 50 messages")
    await asyncio.sleep(0.5)  # every other frame is received by now, and waits
    assert len(room.parsed) == 50
    assert isinstance(client.ws, CaptureWebSocket)
    assert client.ws.frame_waiting()
    room.limit = None
    room.open.set()
    await until(lambda: len(room.parsed) >= len(prepared), 30, "the rest once there is room")
    assert [mid for mid, _ in room.parsed] == [p.key for p in prepared]
