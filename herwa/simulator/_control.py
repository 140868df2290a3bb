"""The control API under ``/_sim``: drive a simulator that runs in another process.

Every operation here is also a :class:`Simulator` method; these handlers only translate JSON.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from herwa.simulator._faults import FaultError
from herwa.simulator._rest import error, json_response

if TYPE_CHECKING:
    from herwa.simulator._simulator import Simulator

Json = dict[str, Any]


async def _body(request: web.Request) -> Json:
    if not request.can_read_body:
        return {}
    data: Json = await request.json(loads=orjson.loads)
    return data


def control_routes(sim: Simulator) -> list[web.RouteDef]:
    async def ledger(request: web.Request) -> web.Response:
        return json_response(sim.ledger.summary())

    async def ledger_messages(request: web.Request) -> web.Response:
        gid = request.query.get("guild_id")
        return json_response(sim.ledger.message_rows(int(gid) if gid else None))

    async def ledger_voice(request: web.Request) -> web.Response:
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
                for v in sim.ledger.voice_sessions
            ]
        )

    async def ledger_deliveries(request: web.Request) -> web.Response:
        q = request.query
        return json_response(
            sim.ledger.delivery_rows(
                session_id=q.get("session_id"),
                shard_id=int(q["shard_id"]) if "shard_id" in q else None,
            )
        )

    async def world(request: web.Request) -> web.Response:
        return json_response(sim.world_summary())

    async def sessions(request: web.Request) -> web.Response:
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
                for s in sim.sessions()
            ]
        )

    async def env(request: web.Request) -> web.Response:
        return json_response(sim.env())

    async def step(request: web.Request) -> web.Response:
        b = await _body(request)
        fams = sim.step(int(b.get("count", 1)), family=b.get("family"))
        return json_response({"emitted": len(fams)})

    async def start(request: web.Request) -> web.Response:
        b = await _body(request)
        sim.start_activity(
            float(b.get("rate", 10.0)),
            replay_from_ms=b.get("replay_from_ms"),
            speed=float(b.get("speed", 1.0)),
        )
        return json_response({"rate": sim.rate})

    async def pace(request: web.Request) -> web.Response:
        b = await _body(request)
        sim.set_rate(float(b["rate"]))
        return json_response({"rate": sim.rate})

    async def stop(request: web.Request) -> web.Response:
        await sim.stop_activity()
        return json_response({"rate": 0})

    async def burst(request: web.Request) -> web.Response:
        b = await _body(request)
        rate = await sim.burst(int(b.get("count", 1000)), family=b.get("family", "message"))
        return json_response({"events_per_second": rate})

    async def fault(request: web.Request) -> web.Response:
        b = await _body(request)
        try:
            n = await sim.inject_fault(
                request.match_info["fault"],
                int(b.get("shard_id", 0)),
                seconds=float(b.get("seconds", 5.0)),
            )
        except FaultError as exc:
            return error(409, str(exc))
        return json_response({"sessions": n})

    async def interaction(request: web.Request) -> web.Response:
        b = await _body(request)
        try:
            result = await sim.invoke_command(
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

    async def attachment(request: web.Request) -> web.Response:
        f = sim.interactions.files.get(int(request.match_info["fid"]))
        if f is None:
            return error(404, "Unknown attachment")
        return web.Response(body=f.data, content_type=f.content_type)

    async def history(request: web.Request) -> web.Response:
        b = await _body(request)
        n = sim.create_history(
            days=float(b.get("days", 14)), messages_per_day=int(b.get("messages_per_day", 500))
        )
        return json_response({"messages": n})

    async def revoke(request: web.Request) -> web.Response:
        sim.revoke_token()
        return json_response({"revoked": True})

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(0)
        return json_response({"ok": True, "url": sim.url})

    return [
        web.get("/_sim/health", health),
        web.get("/_sim/env", env),
        web.get("/_sim/world", world),
        web.get("/_sim/sessions", sessions),
        web.get("/_sim/ledger", ledger),
        web.get("/_sim/ledger/messages", ledger_messages),
        web.get("/_sim/ledger/voice", ledger_voice),
        web.get("/_sim/ledger/deliveries", ledger_deliveries),
        web.post("/_sim/activity/step", step),
        web.post("/_sim/activity/start", start),
        web.post("/_sim/activity/pace", pace),
        web.post("/_sim/activity/stop", stop),
        web.post("/_sim/activity/burst", burst),
        web.post("/_sim/history", history),
        web.post("/_sim/faults/{fault}", fault),
        web.post("/_sim/interactions", interaction),
        web.get("/_sim/attachments/{fid}/{name}", attachment),
        web.post("/_sim/token/revoke", revoke),
    ]
