"""The per-shard discord.py client: minimal intents, no chunking, no caches it does not need,
raw parsers for the events it only records, and a connect loop that can start by RESUMEing a
session another process (or an earlier life of this pod) left behind.

Intents: guilds, guild messages, guild message reactions, guild voice states, members;
MESSAGE_CONTENT only when configured (see :mod:`herwa.bot.capture` for what is lost without it);
GUILD_PRESENCES only when presence capture is configured (:mod:`herwa.bot.presence`). Typing and
DMs are off.

The recorded events never become discord.py model objects: their entries in the connection
state's parser table are replaced by functions that turn the raw payload into rows. discord.py
still parses READY, GUILD_CREATE, channels and threads (cheap and rare) so its connection logic
keeps working.

The websocket (:class:`CaptureWebSocket`) reads the frames already received in bursts, arms the
receive timeout only when it has to wait, and hands a recorded event straight to its parser
(figures: benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import orjson
from discord.backoff import ExponentialBackoff
from discord.errors import ConnectionClosed, GatewayNotFound, HTTPException
from discord.gateway import DiscordWebSocket, ReconnectWebSocket, WebSocketClosure

from herwa.bot.capture import BadPayload, rejected

log = logging.getLogger(__name__)

Parser = Callable[[Any], None]
# Close codes after which reconnecting cannot help (bad token, shard, intents).
FATAL_CLOSE_CODES = frozenset((4004, 4010, 4011, 4012, 4013, 4014))
RESUMABLE_CLOSE = 4000
# Frames read one after another before the loop runs its other tasks (the flusher, the lease
# renewal, the other shards): a few milliseconds of parsing at most.
BURST = 128
_DISPATCH = DiscordWebSocket.DISPATCH


def capture_intents(*, message_content: bool, presences: bool = False) -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.voice_states = True
    intents.members = True
    intents.guild_reactions = True
    intents.message_content = message_content
    intents.presences = presences
    return intents


def _guarded(event: str, *parsers: Parser) -> Parser:
    def run(data: Any) -> None:
        for parse in parsers:
            try:
                parse(data)
            except BadPayload as exc:
                rejected(event, exc.reason)
            except Exception:
                rejected(event, "malformed")
                log.exception("unreadable %s payload skipped", event)

    return run


class CaptureWebSocket(DiscordWebSocket):
    """discord.py's gateway websocket, cheaper per event for a shard that records:

    - :meth:`poll_burst` reads the frames already received one after another, as long as the
      buffer has room, instead of one frame per turn of the event loop;
    - :meth:`poll_event` arms discord.py's receive timeout (a dead connection's guard) only when
      no frame is waiting: with one waiting it cannot fire, and arming it per frame was the
      largest single cost of the bot's read loop;
    - :meth:`received_message` hands a DISPATCH of a ``recorded`` event (discord.py never sees
      those: :meth:`CaptureClient.install_parsers`) straight to its parser, with the sequence
      and the keep-alive updated as discord.py does; everything else takes discord.py's path.
      Not dispatched for those: ``socket_event_type``, a debug event nothing here listens to.
    """

    # The events whose parsers are capture's alone; set once the websocket is open.
    recorded: frozenset[str] = frozenset()

    def __init__(
        self, socket: aiohttp.ClientWebSocketResponse, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(socket, loop=loop)
        # aiohttp's queue of received frames (its internals): without it, every read waits
        # with the timeout and a burst is one frame, which is discord.py's own behaviour.
        frames = getattr(getattr(socket, "_reader", None), "_buffer", None)
        self._frames: deque[Any] | None = frames if isinstance(frames, deque) else None

    def frame_waiting(self) -> bool:
        return bool(self._frames)

    async def poll_burst(self, room: Callable[[], bool], limit: int = BURST) -> None:
        """Read one frame (waiting for it if need be), then those already received, up to
        ``limit`` in all, while ``room()``: the buffer's bound holds per event."""
        await self.poll_event()
        frames = self._frames
        n = 1
        while frames and n < limit and room():
            await self.poll_event()
            n += 1

    async def poll_event(self) -> None:
        # discord.py 2.7's poll_event, but for the timeout.
        socket = self.socket
        try:
            if self._frames:
                msg = await socket.receive()
            else:
                msg = await socket.receive(timeout=self._max_heartbeat_timeout)
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                await self.received_message(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                log.debug("Received error %s", msg)
                raise WebSocketClosure
            elif msg.type in (
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSE,
            ):
                log.debug("Received %s", msg)
                raise WebSocketClosure
        except (TimeoutError, WebSocketClosure) as e:
            if self._keep_alive:
                self._keep_alive.stop()
                self._keep_alive = None
            await socket.close(code=RESUMABLE_CLOSE)
            if isinstance(e, TimeoutError):
                raise ReconnectWebSocket(self.shard_id) from None
            code = self._close_code or socket.close_code
            if self._can_handle_close():
                raise ReconnectWebSocket(self.shard_id) from None
            raise ConnectionClosed(socket, shard_id=self.shard_id, code=code) from None

    async def received_message(self, msg: Any, /) -> None:
        recorded = self.recorded
        if not recorded:
            await super().received_message(msg)
            return
        if type(msg) is bytes:
            msg = self._decompressor.decompress(msg)
            if msg is None:  # part of a message
                return
        payload = orjson.loads(msg)
        event = payload.get("t")
        if event in recorded and payload.get("op") == _DISPATCH and not self._dispatch_listeners:
            self.log_receive(msg)
            seq = payload.get("s")
            if seq is not None:
                self.sequence = seq
            if self._keep_alive:
                self._keep_alive.tick()
            self._discord_parsers[event](payload.get("d"))
            return
        # The rest (READY, GUILD_CREATE, heartbeats, …) is rare: decoded once more by discord.py.
        await super().received_message(msg)


class CaptureClient(discord.Client):
    def __init__(
        self,
        *,
        shard_id: int,
        shard_count: int,
        message_content: bool,
        guild_ready_timeout: float,
        presences: bool = False,
        before_identify: Callable[[int], Awaitable[None]],
        wait_for_room: Callable[[], Awaitable[None]],
        has_room: Callable[[], bool],
    ) -> None:
        super().__init__(
            intents=capture_intents(message_content=message_content, presences=presences),
            shard_id=shard_id,
            shard_count=shard_count,
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            max_messages=None,
            guild_ready_timeout=guild_ready_timeout,
        )
        self._before_identify = before_identify
        self._wait_for_room = wait_for_room
        self._has_room = has_room
        self._recorded: frozenset[str] = frozenset()
        self._stopping = False

    def install_parsers(self, replace: dict[str, Parser], wrap: dict[str, Parser]) -> None:
        """``replace``: discord.py never sees these events. ``wrap``: ours runs first, then
        discord.py's own parser. Each is guarded: a payload one of them cannot read is counted
        and skipped, because an exception here would end the gateway loop, and the RESUME
        after it would deliver the same payload again, for ever."""
        parsers: dict[str, Parser] = self._connection.parsers
        self._recorded = frozenset(replace)
        for event, fn in replace.items():
            parsers[event] = _guarded(event, fn)
        for event, fn in wrap.items():
            original = parsers.get(event)
            parsers[event] = _guarded(event, fn, *([original] if original is not None else []))

    def parse_interaction(self, d: dict[str, Any]) -> None:
        """Hand an INTERACTION_CREATE to discord.py (its command tree), as its own parser would:
        for a shard that took the event out of discord.py's hands (resharding)."""
        self._connection.parse_interaction_create(d)  # type: ignore[arg-type]

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Replaces discord.py's fixed 5 s sleep with the cross-pod per-bucket lock.
        await self._before_identify(self.shard_id or 0)

    async def run_gateway(self, resume: dict[str, Any] | None = None) -> None:
        """discord.py's ``connect`` loop, plus: start from a stored session (RESUME), stop
        reading while the row buffer is full, and leave when :meth:`stop_gateway` is called."""
        backoff = ExponentialBackoff()
        params: dict[str, Any] = {"initial": True, "shard_id": self.shard_id}
        if resume:
            params.update(resume=True, **resume)
        while not self._stopping:
            try:
                ws = await asyncio.wait_for(CaptureWebSocket.from_client(self, **params), 60)
                ws.recorded = self._recorded
                self.ws = ws
                params["initial"] = False
                while True:
                    await self._wait_for_room()
                    await ws.poll_burst(self._has_room)
                    # A burst already buffered (the GUILD_CREATEs after IDENTIFY, a RESUME's
                    # replay) is read without ever suspending: let the lease renewal, the
                    # flusher and the other shards run between two bursts.
                    await asyncio.sleep(0)
            except ReconnectWebSocket as e:
                if self.stopping():
                    return
                self.dispatch("disconnect")
                params.update(
                    sequence=self.ws.sequence, resume=e.resume, session=self.ws.session_id
                )
                params["gateway"] = self.ws.gateway if e.resume else None
            except (
                TimeoutError,
                OSError,
                HTTPException,
                GatewayNotFound,
                ConnectionClosed,
                aiohttp.ClientError,
            ) as exc:
                if self.stopping():
                    return
                self.dispatch("disconnect")
                if isinstance(exc, ConnectionClosed) and exc.code in FATAL_CLOSE_CODES:
                    raise
                delay = backoff.delay()
                log.warning(
                    "shard %s gateway error (%s); reconnecting in %.1fs",
                    self.shard_id,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                if self.ws is not None:
                    params.update(
                        sequence=self.ws.sequence,
                        gateway=self.ws.gateway,
                        resume=self.ws.session_id is not None,
                        session=self.ws.session_id,
                    )

    def stopping(self) -> bool:
        return self._stopping

    async def stop_gateway(self) -> None:
        """Close the websocket *resumably* (4000): the gateway keeps the session, so whoever
        opens this shard next RESUMEs it and gets every event this client did not read."""
        self._stopping = True
        ws = self.ws
        if ws is not None and ws.open:
            await ws.close(code=RESUMABLE_CLOSE)
