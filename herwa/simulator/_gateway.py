"""Gateway v10 over a websocket, as discord.py 2.7 expects it.

Every dispatch is serialised once and framed by hand: the payload bytes are spliced into
``{"t":..,"s":..,"op":0,"d":..}`` per session and the websocket frame is written straight to the
transport. That keeps the per-event cost to a few byte copies, which is what lets one process
push tens of thousands of MESSAGE_CREATE per second.

Sessions outlive their connections (as on Discord): events for a shard whose connection is down
are sequenced into the session's buffer and replayed on RESUME.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from herwa.json_types import Json
from herwa.simulator._ledger import Delivery, Ledger

if TYPE_CHECKING:
    from herwa.simulator._app import AppState
    from herwa.simulator._world import World

_log = logging.getLogger(__name__)

# Intent bits (https://discord.com/developers/docs/events/gateway#gateway-intents).
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_VOICE_STATES = 1 << 7
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
ALL_INTENTS = (1 << 26) - 1 | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25)

# Close codes discord.py must handle.
CLOSE_UNKNOWN_ERROR = 4000
CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTH_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_SESSION_TIMED_OUT = 4009
CLOSE_INVALID_SHARD = 4010
CLOSE_SHARDING_REQUIRED = 4011
CLOSE_INVALID_INTENTS = 4013
CLOSE_DISALLOWED_INTENTS = 4014


def ws_frame(payload: bytes, *, binary: bool) -> bytes:
    """An unmasked server-to-client websocket frame (RFC 6455 section 5.2)."""
    first = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


@dataclass
class GatewayConfig:
    heartbeat_interval_ms: int = 41_250
    max_concurrency: int = 1
    identify_window_s: float = 5.0
    session_start_total: int = 1000
    max_guilds_per_shard: int = 2500
    resume_timeout_s: float = 120.0
    resume_buffer: int = 50_000
    # Discord closes connections that fall this far behind instead of buffering forever.
    max_write_backlog: int = 256 * 1024 * 1024
    # discord.py always asks for a compressed stream but parses plain text frames too; False
    # sends plain text whatever was asked (cheaper for both sides in benchmarks).
    honour_compression: bool = True


def as_reached_at(url: str, host: str) -> str:
    """``url`` with its host and port replaced by ``host``, the Host header a client sent.

    Clients reach the simulator at whatever address they were given (loopback, or a forwarded
    address from inside a container); the URLs it hands out must be reachable from there too, as
    Discord's resume and gateway URLs are from wherever a bot runs."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=host)) if host else url


class Connection:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, compress: bool) -> None:
        self.ws = ws
        self.host = request.host
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("websocket transport already gone")
        self.transport = transport
        self._z = zlib.compressobj() if compress else None
        self.session: Session | None = None
        self.last_heartbeat = time.monotonic()
        self.opened = time.monotonic()
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed or self.transport.is_closing():
            return
        if self._z is not None:
            # zlib-stream: one deflate stream per connection, each message ends in a sync flush.
            data = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
            self.transport.write(ws_frame(data, binary=True))
        else:
            self.transport.write(ws_frame(data, binary=False))

    def write_many(self, frames: list[bytes]) -> None:
        if self._z is not None:
            for f in frames:
                self.write(f)
        elif not (self.closed or self.transport.is_closing()):
            self.transport.write(b"".join(ws_frame(f, binary=False) for f in frames))

    def send_op(self, op: int, d: Any) -> None:
        self.write(orjson.dumps({"op": op, "d": d, "s": None, "t": None}))

    def backlog(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    async def close(self, code: int, message: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a network failure."""
        self.closed = True
        self.transport.abort()


@dataclass
class Session:
    id: str
    token: str
    shard_id: int
    shard_count: int
    intents: int
    buffer_size: int
    conn: Connection | None = None
    seq: int = 0
    sent_upto: int = 0
    stalled_until: float = 0.0
    disconnected_at: float | None = None
    buffer: deque[tuple[int, bytes]] = field(default_factory=deque)
    replayed: int = 0

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    @property
    def stalled(self) -> bool:
        return self.stalled_until > time.monotonic()

    def covers(self, guild_id: int | None) -> bool:
        if guild_id is None:
            return self.shard_id == 0
        return (guild_id >> 22) % self.shard_count == self.shard_id

    def push(self, event: bytes, d: bytes) -> tuple[int, bool]:
        """Sequence one dispatch; returns (seq, written to a live connection)."""
        self.seq += 1
        seq = self.seq
        frame = b'{"t":"' + event + b'","s":' + str(seq).encode() + b',"op":0,"d":' + d + b"}"
        buf = self.buffer
        buf.append((seq, frame))
        if len(buf) > self.buffer_size:
            buf.popleft()
        conn = self.conn
        if conn is not None and not conn.closed and self.stalled_until == 0.0:
            conn.write(frame)
            self.sent_upto = seq
            return seq, True
        return seq, False

    def flush(self) -> None:
        """Write what a stall held back."""
        if self.conn is None or self.conn.closed:
            return
        pending = [f for s, f in self.buffer if s > self.sent_upto]
        if pending:
            self.conn.write_many(pending)
        self.sent_upto = self.seq

    def oldest_seq(self) -> int:
        return self.buffer[0][0] if self.buffer else self.seq + 1


Stripper = Callable[[Json], Json]


@dataclass(frozen=True)
class Prepared:
    """A dispatch serialised ahead of time: with and without MESSAGE_CONTENT fields."""

    event: bytes
    guild_id: int | None
    full: bytes
    stripped: bytes | None
    intent: int
    key: int


class Gateway:
    def __init__(self, app: AppState, world: World, ledger: Ledger, config: GatewayConfig) -> None:
        self.app = app
        self.world = world
        self.ledger = ledger
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self._identify_at: dict[tuple[str, int], float] = {}
        self.session_starts_used = 0
        self.ws_url = ""
        # REQUEST_GUILD_MEMBERS (op 8) is answered by whoever owns the members: the simulator.
        self.on_member_request: Callable[[Session, Json], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # When set, dispatches are serialised into this list instead of sent (prepared bursts).
        self.capture: list[Prepared] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for conn in list(self.connections):
            await conn.close(1001, "simulator shutting down")

    async def _watch(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(min(1.0, interval / 4))
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.closed:
                    continue
                if now - conn.last_heartbeat > interval * 1.5 + 1.0 and conn.session is not None:
                    # A client that stops heartbeating is a zombie: Discord ends the session.
                    self.sessions.pop(conn.session.id, None)
                    await conn.close(CLOSE_SESSION_TIMED_OUT, "Session timed out")
                elif conn.backlog() > self.config.max_write_backlog:
                    await conn.close(CLOSE_UNKNOWN_ERROR, "Client too slow")
            for s in list(self.sessions.values()):
                if s.stalled_until and s.stalled_until <= now:
                    s.stalled_until = 0.0
                    s.flush()
                if (
                    s.disconnected_at is not None
                    and now - s.disconnected_at > self.config.resume_timeout_s
                ):
                    del self.sessions[s.id]

    # -- dispatch ---------------------------------------------------------------------------
    def dispatch(
        self,
        event: str,
        guild_id: int | None,
        d: Json,
        *,
        intent: int,
        key: int = 0,
        strip: Stripper | None = None,
    ) -> int:
        """Route one event to every session whose shard owns the guild; returns how many."""
        if self.capture is not None:
            self.capture.append(
                self.serialize(event, guild_id, d, intent=intent, key=key, strip=strip)
            )
            return 0
        full: bytes = b""
        stripped: bytes | None = None
        for s in self.sessions.values():
            if s.covers(guild_id) and (not intent or s.intents & intent):
                if strip is not None and not s.intents & MESSAGE_CONTENT:
                    if stripped is None:
                        stripped = orjson.dumps(strip(d))
                elif not full:
                    full = orjson.dumps(d)
        return self.dispatch_serialized(
            Prepared(event.encode(), guild_id, full, stripped, intent, key)
        )

    @staticmethod
    def serialize(
        event: str,
        guild_id: int | None,
        d: Json,
        *,
        intent: int,
        key: int = 0,
        strip: Stripper | None = None,
    ) -> Prepared:
        stripped = orjson.dumps(strip(d)) if strip is not None else None
        return Prepared(event.encode(), guild_id, orjson.dumps(d), stripped, intent, key)

    def dispatch_serialized(self, p: Prepared) -> int:
        record = self.ledger.record_deliveries
        n = 0
        for s in self.sessions.values():
            if p.intent and not s.intents & p.intent:
                continue
            if not s.covers(p.guild_id):
                continue
            body = p.full
            if p.stripped is not None and not s.intents & MESSAGE_CONTENT:
                body = p.stripped
            seq, live = s.push(p.event, body)
            n += 1
            if record:
                self.ledger.delivered(
                    Delivery(p.event.decode(), p.key, p.guild_id, s.id, s.shard_id, seq, live)
                )
        name = p.event.decode()
        self.ledger.events_emitted[name] += 1
        if n == 0:
            self.ledger.undelivered.append((name, p.key, p.guild_id))
        return n

    def backlog(self) -> int:
        return max((c.backlog() for c in self.connections), default=0)

    def sessions_for_shard(self, shard_id: int) -> list[Session]:
        return [s for s in self.sessions.values() if s.shard_id == shard_id]

    # -- websocket handler ------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        compress = self.config.honour_compression and request.query.get("compress") == "zlib-stream"
        conn = Connection(ws, request, compress)
        self.connections.add(conn)
        conn.send_op(
            10,
            {
                "heartbeat_interval": self.config.heartbeat_interval_ms,
                "_trace": ["herwa-simulator"],
            },
        )
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                    break
                try:
                    payload = orjson.loads(msg.data)
                    op = payload["op"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await conn.close(CLOSE_DECODE_ERROR, "Error while decoding payload.")
                    break
                await self._on_op(conn, op, payload.get("d"))
                if conn.closed:
                    break
        finally:
            self.connections.discard(conn)
            conn.closed = True
            sess = conn.session
            if sess is not None and sess.conn is conn:
                sess.conn = None
                sess.disconnected_at = time.monotonic()
                # A deliberate 1000/1001 close ends the session (as on Discord); anything else
                # leaves it resumable.
                if ws.close_code in (1000, 1001) and sess.id in self.sessions:
                    del self.sessions[sess.id]
        return ws

    async def _on_op(self, conn: Connection, op: int, d: Any) -> None:
        if op == 1:
            conn.last_heartbeat = time.monotonic()
            if conn.session is None or not conn.session.stalled:
                conn.send_op(11, None)
        elif op == 2:
            await self._identify(conn, d)
        elif op == 6:
            await self._resume(conn, d)
        elif conn.session is None:
            await conn.close(CLOSE_NOT_AUTHENTICATED, "Not authenticated.")
        elif op == 8:
            if self.on_member_request is not None:
                self.on_member_request(conn.session, d)
        elif op in (3, 4):
            pass  # presence and voice-state updates from the bot: accepted, not simulated
        else:
            await conn.close(CLOSE_UNKNOWN_OPCODE, "Unknown opcode.")

    async def _identify(self, conn: Connection, d: Json) -> None:
        if conn.session is not None:
            await conn.close(CLOSE_ALREADY_AUTHENTICATED, "Already authenticated.")
            return
        token = str(d.get("token", ""))
        if not self.app.token_valid(token):
            await conn.close(CLOSE_AUTH_FAILED, "Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if intents & ~ALL_INTENTS:
            await conn.close(CLOSE_INVALID_INTENTS, "Invalid intent(s).")
            return
        if intents & PRIVILEGED & ~self.app.privileged_intents:
            await conn.close(CLOSE_DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        shard = d.get("shard") or [0, 1]
        shard_id, shard_count = int(shard[0]), int(shard[1])
        if shard_count < 1 or not 0 <= shard_id < shard_count:
            await conn.close(CLOSE_INVALID_SHARD, "Invalid shard.")
            return
        owned = [g for g in self.world.guilds if (g >> 22) % shard_count == shard_id]
        if len(owned) > self.config.max_guilds_per_shard:
            await conn.close(CLOSE_SHARDING_REQUIRED, "Sharding required.")
            return
        now = time.monotonic()
        bucket = (token, shard_id % self.config.max_concurrency)
        last = self._identify_at.get(bucket)
        if last is not None and now - last < self.config.identify_window_s:
            # Over max_concurrency per window: Discord answers INVALID_SESSION (not resumable).
            self.ledger.identify_refused[f"shard {shard_id}"] += 1
            conn.send_op(9, False)
            return
        self._identify_at[bucket] = now
        self.session_starts_used += 1
        if self.session_starts_used > self.config.session_start_total:
            # The daily limit: Discord terminates every session and resets the token.
            self.app.revoke(token)
            for c in list(self.connections):
                await c.close(CLOSE_AUTH_FAILED, "Authentication failed.")
            return
        # A new session for the same shard (and shard count) replaces the old one.
        for old in [
            s
            for s in self.sessions.values()
            if s.token == token and s.shard_id == shard_id and s.shard_count == shard_count
        ]:
            del self.sessions[old.id]
            if old.conn is not None and old.conn is not conn:
                await old.conn.close(CLOSE_SESSION_TIMED_OUT, "Session replaced")
        sess = Session(
            secrets.token_hex(16), token, shard_id, shard_count, intents, self.config.resume_buffer
        )
        sess.conn = conn
        conn.session = sess
        self.sessions[sess.id] = sess
        ready = {
            "v": 10,
            "user": {
                **self.app.bot_user.payload(),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
                "email": None,
            },
            "guilds": [{"id": str(g), "unavailable": True} for g in owned],
            "session_id": sess.id,
            "session_type": "normal",
            "resume_gateway_url": as_reached_at(self.ws_url, conn.host),
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.app.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "_trace": ["herwa-simulator"],
        }
        sess.push(b"READY", orjson.dumps(ready))
        include_members = bool(intents & GUILD_MEMBERS)
        for gid in owned:
            guild = self.world.guilds[gid]
            payload = guild.create_payload(
                bot=self.world.bot_member(guild),
                include_members=include_members and len(guild.members) <= 250,
            )
            sess.push(b"GUILD_CREATE", orjson.dumps(payload))

    async def _resume(self, conn: Connection, d: Json) -> None:
        token = str(d.get("token", ""))
        if not self.app.token_valid(token):
            await conn.close(CLOSE_AUTH_FAILED, "Authentication failed.")
            return
        sess = self.sessions.get(str(d.get("session_id")))
        seq = d.get("seq") or 0
        if sess is None or sess.token != token or seq > sess.seq or seq < sess.oldest_seq() - 1:
            conn.send_op(9, False)
            return
        old = sess.conn
        if old is not None and old is not conn:
            old.session = None
            await old.close(CLOSE_UNKNOWN_ERROR, "Session resumed elsewhere")
        sess.conn = conn
        sess.disconnected_at = None
        sess.stalled_until = 0.0
        conn.session = sess
        missed = [f for s, f in sess.buffer if s > seq]
        sess.replayed += len(missed)
        if missed:
            conn.write_many(missed)
        sess.sent_upto = sess.seq
        sess.push(b"RESUMED", b'{"_trace":["herwa-simulator"]}')
