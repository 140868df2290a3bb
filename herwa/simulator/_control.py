"""The control API under ``/_sim``: drive a simulator that runs in another process.

Every operation here is also a :class:`Simulator` method; these handlers only translate JSON.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from herwa.json_types import Json
from herwa.simulator._faults import FaultError
from herwa.simulator._gateway import Session
from herwa.simulator._http import error, json_body, json_response
from herwa.simulator._interactions import InteractionStore
from herwa.simulator._ledger import Ledger


class ControlHost(Protocol):
    """The simulator operations the control API offers over HTTP."""

    @property
    def ledger(self) -> Ledger: ...
    @property
    def interactions(self) -> InteractionStore: ...
    @property
    def url(self) -> str: ...
    @property
    def rate(self) -> float: ...
    def world_summary(self) -> Json: ...
    def sessions(self) -> list[Session]: ...
    def env(self) -> dict[str, str]: ...
    def step(
        self, count: int = 1, *, family: str | None = None, at_ms: int | None = None
    ) -> list[str]: ...
    def start_activity(
        self, rate: float, *, replay_from_ms: int | None = None, speed: float = 1.0
    ) -> None: ...
    def set_rate(self, rate: float) -> None: ...
    async def stop_activity(self) -> None: ...
    async def burst(
        self, count: int, *, family: str | None = "message", chunk: int = 256
    ) -> float: ...
    def create_history(
        self, *, days: float, messages_per_day: int, end_ms: int | None = None
    ) -> int: ...
    async def inject_fault(self, fault: str, shard_id: int, *, seconds: float = 5.0) -> int: ...
    def revoke_token(self) -> None: ...
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
    ) -> Json: ...


class Control:
    def __init__(self, sim: ControlHost) -> None:
        self.sim = sim

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_sim/health", self.health),
            web.get("/_sim/env", self.env),
            web.get("/_sim/world", self.world),
            web.get("/_sim/sessions", self.sessions),
            web.get("/_sim/ledger", self.ledger),
            web.get("/_sim/ledger/messages", self.ledger_messages),
            web.get("/_sim/ledger/voice", self.ledger_voice),
            web.get("/_sim/ledger/deliveries", self.ledger_deliveries),
            web.post("/_sim/activity/step", self.step),
            web.post("/_sim/activity/start", self.start),
            web.post("/_sim/activity/pace", self.pace),
            web.post("/_sim/activity/stop", self.stop),
            web.post("/_sim/activity/burst", self.burst),
            web.post("/_sim/history", self.history),
            web.post("/_sim/faults/{fault}", self.fault),
            web.post("/_sim/interactions", self.interaction),
            web.get("/_sim/attachments/{fid}/{name}", self.attachment),
            web.post("/_sim/token/revoke", self.revoke),
        ]

    # -- what the simulator knows ------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0)
        return json_response({"ok": True, "url": self.sim.url})

    async def env(self, request: web.Request) -> web.Response:
        return json_response(self.sim.env())

    async def world(self, request: web.Request) -> web.Response:
        return json_response(self.sim.world_summary())

    async def sessions(self, request: web.Request) -> web.Response:
        return json_response(
            [
                {
                    "session_id": s.id,
                    "shard": [s.shard_id, s.shard_count],
                    "intents": s.intents,
                    "seq": s.seq,
                    "connected": s.connected,
                    "replayed": s.replayed,
                }
                for s in self.sim.sessions()
            ]
        )

    async def ledger(self, request: web.Request) -> web.Response:
        return json_response(self.sim.ledger.summary())

    async def ledger_messages(self, request: web.Request) -> web.Response:
        gid = request.query.get("guild_id")
        return json_response(self.sim.ledger.message_rows(int(gid) if gid else None))

    async def ledger_voice(self, request: web.Request) -> web.Response:
        return json_response(
            [
                {
                    "guild_id": str(v.guild_id),
                    "user_id": str(v.user_id),
                    "channel_id": str(v.channel_id),
                    "join_ms": v.join_ms,
                    "leave_ms": v.leave_ms,
                    "seconds": v.seconds,
                    "moves": v.moves,
                    "mute_changes": v.mute_changes,
                    "ended_by": v.ended_by,
                }
                for v in self.sim.ledger.voice_sessions
            ]
        )

    async def ledger_deliveries(self, request: web.Request) -> web.Response:
        q = request.query
        return json_response(
            self.sim.ledger.delivery_rows(
                session_id=q.get("session_id"),
                shard_id=int(q["shard_id"]) if "shard_id" in q else None,
            )
        )

    async def attachment(self, request: web.Request) -> web.Response:
        f = self.sim.interactions.files.get(int(request.match_info["fid"]))
        if f is None:
            return error(404, "Unknown attachment")
        return web.Response(body=f.data, content_type=f.content_type)

    # -- driving it -------------------------------------------------------------------------
    async def step(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        fams = self.sim.step(int(b.get("count", 1)), family=b.get("family"))
        return json_response({"emitted": len(fams)})

    async def start(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        self.sim.start_activity(
            float(b.get("rate", 10.0)),
            replay_from_ms=b.get("replay_from_ms"),
            speed=float(b.get("speed", 1.0)),
        )
        return json_response({"rate": self.sim.rate})

    async def pace(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        self.sim.set_rate(float(b["rate"]))
        return json_response({"rate": self.sim.rate})

    async def stop(self, request: web.Request) -> web.Response:
        await self.sim.stop_activity()
        return json_response({"rate": 0})

    async def burst(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        rate = await self.sim.burst(int(b.get("count", 1000)), family=b.get("family", "message"))
        return json_response({"events_per_second": rate})

    async def history(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        n = self.sim.create_history(
            days=float(b.get("days", 14)), messages_per_day=int(b.get("messages_per_day", 500))
        )
        return json_response({"messages": n})

    async def fault(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        try:
            n = await self.sim.inject_fault(
                request.match_info["fault"],
                int(b.get("shard_id", 0)),
                seconds=float(b.get("seconds", 5.0)),
            )
        except FaultError as exc:
            return error(409, str(exc))
        return json_response({"sessions": n})

    async def interaction(self, request: web.Request) -> web.Response:
        b = await json_body(request)
        try:
            result = await self.sim.invoke_command(
                int(b["guild_id"]),
                str(b["name"]),
                b.get("options") or [],
                channel_id=int(b["channel_id"]) if b.get("channel_id") else None,
                user_id=int(b["user_id"]) if b.get("user_id") else None,
                timeout=float(b.get("timeout", 10.0)),
                include_bytes=bool(b.get("include_bytes", False)),
            )
        except TimeoutError:
            return error(504, "the bot did not answer the interaction in time")
        return json_response(result)

    async def revoke(self, request: web.Request) -> web.Response:
        self.sim.revoke_token()
        return json_response({"revoked": True})
