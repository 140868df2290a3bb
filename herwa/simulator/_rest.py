"""The REST endpoints a bot uses, under ``/api/v10``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import BodyPartReader, web

from herwa.json_types import Json
from herwa.simulator._actions import Actions
from herwa.simulator._app import AppState
from herwa.simulator._command_options import check_choices, check_registration
from herwa.simulator._gateway import Gateway, as_reached_at
from herwa.simulator._history import History
from herwa.simulator._http import error, json_response
from herwa.simulator._interactions import (
    APPLICATION_COMMAND_AUTOCOMPLETE,
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE,
    UPDATE_MESSAGE,
    InteractionRecord,
    InteractionStore,
    StoredFile,
)
from herwa.simulator._snowflake import iso_from_ms
from herwa.simulator._world import World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_PREFIX = "/api/v10"


class RestHost(Protocol):
    """What the REST endpoints read and change of the simulator serving them."""

    @property
    def app(self) -> AppState: ...
    @property
    def gateway(self) -> Gateway: ...
    @property
    def history(self) -> History: ...
    @property
    def interactions(self) -> InteractionStore: ...
    @property
    def world(self) -> World: ...
    @property
    def activity(self) -> Actions: ...
    @property
    def url(self) -> str: ...
    @property
    def ws_url(self) -> str: ...
    def recommended_shards(self) -> int: ...


@dataclass
class RateLimit:
    """A fixed-window bucket per key, announced the way Discord announces it."""

    limit: int
    per_s: float

    def __post_init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> tuple[bool, dict[str, str]]:
        now = time.time()
        start, used = self._windows.get(key, (now, 0))
        if now - start >= self.per_s:
            start, used = now, 0
        reset_after = max(0.0, start + self.per_s - now)
        allowed = used < self.limit
        if allowed:
            used += 1
            self._windows[key] = (start, used)
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.limit - used),
            "X-RateLimit-Reset": f"{start + self.per_s:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"sim-{key.split(':')[0]}",
        }
        if not allowed:
            headers["Retry-After"] = f"{reset_after:.3f}"
            headers["X-RateLimit-Scope"] = "user"
        return allowed, headers


class Rest:
    def __init__(self, sim: RestHost, history_limit: RateLimit) -> None:
        self.sim = sim
        self.history_limit = history_limit

    def routes(self) -> list[web.RouteDef]:
        p = API_PREFIX
        return [
            web.get(p + "/gateway", self.gateway),
            web.get(p + "/gateway/bot", self.authed(self.gateway_bot)),
            web.get(p + "/users/@me", self.authed(self.me)),
            web.get(p + "/oauth2/applications/@me", self.authed(self.application)),
            web.get(p + "/applications/@me", self.authed(self.application)),
            web.get(p + "/applications/{app}/commands", self.authed(self.get_commands)),
            web.put(p + "/applications/{app}/commands", self.authed(self.put_commands)),
            web.get(
                p + "/applications/{app}/guilds/{guild}/commands", self.authed(self.get_commands)
            ),
            web.put(
                p + "/applications/{app}/guilds/{guild}/commands", self.authed(self.put_commands)
            ),
            web.get(p + "/channels/{channel}", self.authed(self.get_channel)),
            web.get(p + "/channels/{channel}/messages", self.authed(self.channel_messages)),
            web.get(p + "/guilds/{guild}", self.authed(self.get_guild)),
            web.get(p + "/guilds/{guild}/channels", self.authed(self.guild_channels)),
            web.post(p + "/interactions/{iid}/{token}/callback", self.callback),
            web.get(p + "/webhooks/{app}/{token}/messages/{mid}", self.get_webhook_message),
            web.patch(p + "/webhooks/{app}/{token}/messages/{mid}", self.edit_webhook_message),
            web.delete(p + "/webhooks/{app}/{token}/messages/{mid}", self.delete_webhook_message),
            web.post(p + "/webhooks/{app}/{token}", self.followup),
            web.route("*", p + "/{tail:.*}", self.not_found),
        ]

    def authed(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bot ") or not self.sim.app.token_valid(auth[4:]):
                return error(401, "401: Unauthorized")
            return await handler(request)

        return wrapped

    async def not_found(self, request: web.Request) -> web.Response:
        return error(404, "404: Not Found")

    # -- gateway / identity -----------------------------------------------------------------
    async def gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": as_reached_at(self.sim.ws_url, request.host)})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        gw = self.sim.gateway
        cfg = gw.config
        return json_response(
            {
                "url": as_reached_at(self.sim.ws_url, request.host),
                "shards": self.sim.recommended_shards(),
                "session_start_limit": {
                    "total": cfg.session_start_total,
                    "remaining": max(0, cfg.session_start_total - gw.session_starts_used),
                    "reset_after": 86_400_000,
                    "max_concurrency": cfg.max_concurrency,
                },
            }
        )

    async def me(self, request: web.Request) -> web.Response:
        if self.sim.app.login_delay_s:
            await asyncio.sleep(self.sim.app.login_delay_s)
        return json_response(
            {
                **self.sim.app.bot_user.payload(),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
                "locale": "en-US",
            }
        )

    async def application(self, request: web.Request) -> web.Response:
        return json_response(self.sim.app.application_payload())

    # -- commands ---------------------------------------------------------------------------
    async def get_commands(self, request: web.Request) -> web.Response:
        app = self.sim.app
        guild = request.match_info.get("guild")
        cmds = app.guild_commands.get(int(guild), []) if guild else app.global_commands
        return json_response(cmds)

    async def put_commands(self, request: web.Request) -> web.Response:
        app = self.sim.app
        if request.match_info["app"] != str(app.application_id):
            return error(403, "Missing Access", 50001)
        body = await request.json(loads=orjson.loads)
        for cmd in body:
            if (refusal := check_registration(cmd)) is not None:
                return error(400, f"Invalid Form Body: /{cmd.get('name')}: {refusal}", 50035)
        guild = request.match_info.get("guild")
        old = {
            c["name"]: c
            for c in (app.guild_commands.get(int(guild), []) if guild else app.global_commands)
        }
        app.command_version += 1
        out: list[Json] = []
        for cmd in body:
            prev = old.get(cmd["name"])
            ids = self.sim.activity.ids
            out.append(
                {
                    "type": 1,
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "dm_permission": True,
                    "nsfw": False,
                    **cmd,
                    "id": prev["id"] if prev else str(ids.make(int(time.time() * 1000))),
                    "application_id": str(app.application_id),
                    "version": str(app.command_version),
                    **({"guild_id": guild} if guild else {}),
                }
            )
        if guild:
            app.guild_commands[int(guild)] = out
        else:
            app.global_commands = out
        return json_response(out)

    # -- channels / guilds / history --------------------------------------------------------
    async def get_channel(self, request: web.Request) -> web.Response:
        ch = self.sim.world.channels.get(int(request.match_info["channel"]))
        if ch is None:
            return error(404, "Unknown Channel", 10003)
        return json_response(ch.payload())

    async def get_guild(self, request: web.Request) -> web.Response:
        g = self.sim.world.guilds.get(int(request.match_info["guild"]))
        if g is None:
            return error(404, "Unknown Guild", 10004)
        d = g.create_payload(bot=self.sim.world.bot_member(g), include_members=False)
        for k in ("channels", "threads", "members", "voice_states", "presences"):
            d.pop(k, None)
        d["approximate_member_count"] = len(g.members)
        return json_response(d)

    async def guild_channels(self, request: web.Request) -> web.Response:
        g = self.sim.world.guilds.get(int(request.match_info["guild"]))
        if g is None:
            return error(404, "Unknown Guild", 10004)
        return json_response([c.payload() for c in g.channels.values() if not c.is_thread])

    async def channel_messages(self, request: web.Request) -> web.Response:
        cid = int(request.match_info["channel"])
        if cid not in self.sim.world.channels:
            return error(404, "Unknown Channel", 10003)
        allowed, headers = self.history_limit.hit(f"{cid}:messages")
        if not allowed:
            retry = float(headers["Retry-After"])
            return json_response(
                {"message": "You are being rate limited.", "retry_after": retry, "global": False},
                429,
                headers,
            )
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
            before = int(q["before"]) if "before" in q else None
            after = int(q["after"]) if "after" in q else None
            around = int(q["around"]) if "around" in q else None
        except ValueError:
            return error(400, "Invalid Form Body", 50035)
        if not 1 <= limit <= 100:
            return error(400, "Invalid Form Body", 50035)
        msgs = self.sim.history.query(cid, limit=limit, before=before, after=after, around=around)
        if not self.sim.app.privileged_intents & (1 << 15):
            from herwa.simulator._actions import strip_content

            msgs = [strip_content(m) for m in msgs]
        return json_response(msgs, headers=headers)

    # -- interactions -----------------------------------------------------------------------
    async def _read_message_body(self, request: web.Request) -> Json:
        """JSON or multipart (``payload_json`` + ``files[n]``); files are stored."""
        if not request.content_type.startswith("multipart/"):
            data: Json = await request.json(loads=orjson.loads) if request.can_read_body else {}
            return data
        payload: Json = {}
        files: dict[str, tuple[str, str, bytes]] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            raw = await part.read()
            if name == "payload_json":
                payload = orjson.loads(raw)
            elif name.startswith("files["):
                idx = name[6:-1]
                files[idx] = (
                    part.filename or f"file{idx}",
                    part.headers.get("Content-Type", "application/octet-stream"),
                    bytes(raw),
                )
        inner = payload.get("data", payload)
        attachments: list[Json] = []
        described = {str(a.get("id")): a for a in inner.get("attachments", [])}
        for idx, (filename, ctype, blob) in files.items():
            meta = described.get(idx, {})
            fid = self.sim.activity.ids.make(int(time.time() * 1000))
            fname = meta.get("filename") or filename
            self.sim.interactions.files[fid] = StoredFile(fid, fname, ctype, blob)
            url = f"{self.sim.url}/_sim/attachments/{fid}/{fname}"
            attachments.append(
                {
                    "id": str(fid),
                    "filename": fname,
                    "size": len(blob),
                    "url": url,
                    "proxy_url": url,
                    "content_type": ctype,
                    **({"description": meta["description"]} if meta.get("description") else {}),
                }
            )
        # Attachments kept from an earlier version of the message are listed without a file.
        kept = [a for a in inner.get("attachments", []) if str(a.get("id")) not in files]
        inner["attachments"] = kept + attachments
        return payload

    def _bot_message(self, rec: InteractionRecord, body: Json, mid: int | None = None) -> Json:
        app = self.sim.app
        now = int(time.time() * 1000)
        mid = mid or self.sim.activity.ids.make(now)
        return {
            "id": str(mid),
            "channel_id": str(rec.channel_id),
            **({"guild_id": str(rec.guild_id)} if rec.guild_id else {}),
            "author": app.bot_user.payload(),
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "attachments": body.get("attachments") or [],
            "components": body.get("components") or [],
            "flags": int(body.get("flags") or 0),
            "timestamp": iso_from_ms(now),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "type": 20,
            "webhook_id": str(app.application_id),
            "application_id": str(app.application_id),
            "interaction_metadata": {
                "id": str(rec.id),
                "type": 2,
                "name": rec.name,
                "user": rec.user,
                "authorizing_integration_owners": {},
            },
        }

    async def callback(self, request: web.Request) -> web.Response:
        ints = self.sim.interactions
        rec = ints.by_id.get(int(request.match_info["iid"]))
        if rec is None or rec.token != request.match_info["token"]:
            return error(404, "Unknown interaction", 10062)
        if rec.response_type is not None:
            return error(400, "Interaction has already been acknowledged.", 40060)
        if (refused := self._reply_fault(rec)) is not None:
            return refused
        body = await self._read_message_body(request)
        rtype = int(body.get("type", 0))
        data: Json = body.get("data") or {}
        if (refusal := _refuse_callback(rec, rtype, data)) is not None:
            rec.invalid = refusal
            rec.done.set()
            return error(400, f"Invalid Form Body: {refusal}", 50035)
        rec.response_type = rtype
        interaction: Json = {"id": str(rec.id), "type": rec.type}
        resource: Json = {"type": rtype}
        if rtype == AUTOCOMPLETE_RESULT:
            rec.choices = data["choices"]
            rec.done.set()
        elif rtype in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE):
            msg = self._bot_message(rec, data if rtype != DEFERRED_CHANNEL_MESSAGE else {})
            rec.original = msg
            interaction.update(
                response_message_id=msg["id"],
                response_message_loading=rtype == DEFERRED_CHANNEL_MESSAGE,
                response_message_ephemeral=bool(int(data.get("flags") or 0) & 64),
            )
            resource["message"] = msg
            if rtype != DEFERRED_CHANNEL_MESSAGE:
                rec.done.set()
        elif rtype == DEFERRED_UPDATE:
            rec.done.set()
        rec.responded.set()
        if request.query.get("with_response") in ("1", "true", "True"):
            return json_response({"interaction": interaction, "resource": resource})
        return web.Response(status=204)

    def _reply_fault(self, rec: InteractionRecord) -> web.Response | None:
        status = self.sim.interactions.take_reply_fault(rec)
        if status is None:
            return None
        if status == 404:
            return error(404, "Unknown interaction", 10062)
        return error(status, f"{status}: Discord is having trouble")

    def _rec_for(self, request: web.Request) -> InteractionRecord | None:
        if request.match_info["app"] != str(self.sim.app.application_id):
            return None
        return self.sim.interactions.by_token.get(request.match_info["token"])

    def _find_message(self, rec: InteractionRecord, mid: str) -> Json | None:
        if mid == "@original":
            return rec.original
        for m in [rec.original, *rec.followups]:
            if m is not None and m["id"] == mid:
                return m
        return None

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._rec_for(request)
        msg = self._find_message(rec, request.match_info["mid"]) if rec else None
        if msg is None:
            return error(404, "Unknown Message", 10008)
        return json_response(msg)

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._rec_for(request)
        if rec is None:
            return error(404, "Unknown Webhook", 10015)
        msg = self._find_message(rec, request.match_info["mid"])
        if msg is None:
            return error(404, "Unknown Message", 10008)
        if (refused := self._reply_fault(rec)) is not None:
            return refused
        body = await self._read_message_body(request)
        for k in ("content", "embeds", "attachments", "components", "flags"):
            if k in body and body[k] is not None:
                msg[k] = body[k]
        msg["edited_timestamp"] = iso_from_ms(int(time.time() * 1000))
        if msg is rec.original:
            rec.done.set()
        return json_response(msg)

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._rec_for(request)
        if rec is None:
            return error(404, "Unknown Webhook", 10015)
        mid = request.match_info["mid"]
        if mid == "@original":
            rec.original = None
        else:
            rec.followups = [m for m in rec.followups if m["id"] != mid]
        return web.Response(status=204)

    async def followup(self, request: web.Request) -> web.Response:
        rec = self._rec_for(request)
        if rec is None:
            return error(404, "Unknown Webhook", 10015)
        body = await self._read_message_body(request)
        msg = self._bot_message(rec, body)
        if (
            rec.original is not None
            and rec.response_type == DEFERRED_CHANNEL_MESSAGE
            and not rec.done.is_set()
        ):
            # A follow-up to a deferred response edits the loading message, as on Discord.
            msg["id"] = rec.original["id"]
            rec.original = msg
            rec.done.set()
        else:
            rec.followups.append(msg)
            rec.done.set()
        return json_response(msg)


def _refuse_callback(rec: InteractionRecord, rtype: int, data: Json) -> str | None:
    """Why Discord answers a callback 400: an autocomplete interaction takes only its result,
    with choices it would show (see check_choices), and nothing else takes a result."""
    if rec.type == APPLICATION_COMMAND_AUTOCOMPLETE:
        if rtype != AUTOCOMPLETE_RESULT:
            return f"type: {rtype} is not a response to an autocomplete interaction"
        return check_choices(rec.focused or {}, data)
    if rtype == AUTOCOMPLETE_RESULT:
        return "type: an autocomplete result answers only an autocomplete interaction"
    return None
