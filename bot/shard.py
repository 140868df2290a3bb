"""One shard's life in a pod: load its state, open it (RESUME when a session was left behind),
record its events, and close it resumably before its lease is given up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from discord import app_commands

from herwa.bot import metrics
from herwa.bot.capture import (
    channel_payload,
    deletion_rows,
    edit_row,
    guild_join_row,
    guild_payload,
    member_join_row,
    member_leave_row,
    message_row,
    snowflake,
    voice_state_payload,
)
from herwa.bot.client import CaptureClient, Parser
from herwa.bot.commands import install
from herwa.bot.generations import received, received_dt
from herwa.bot.voice import VoiceOp
from herwa.telemetry import tracer

if TYPE_CHECKING:
    from herwa.bot.app import BotApp

log = logging.getLogger(__name__)
_tracer = tracer("herwa.bot.shard")
Json = dict[str, Any]


@dataclass(frozen=True)
class MemberCountOp:
    shard_id: int
    guild_id: int
    count: int


@dataclass(frozen=True)
class Mark:
    """Everything this shard received up to ``seq`` is in (or before) the batch carrying it.
    ``epoch`` is the shard's Postgres fence taken when this runner loaded its state."""

    epoch: int
    session_id: str
    seq: int
    resume_url: str


class ShardRunner:
    def __init__(self, app: BotApp, shard_id: int, token: str) -> None:
        self.app = app
        self.shard_id = shard_id
        self.token = token
        self.epoch = 0  # the Postgres fence (bot_gateway_marks.epoch), set by load_shard_state
        self.client: CaptureClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.guilds: set[int] = set()
        self.session_seen = False
        self.last_alive = time.time()
        self.state = "starting"
        self.resumed_from_store = False

    # -- status ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        c = self.client
        return (
            self.session_seen
            and c is not None
            and c.ws is not None
            and c.ws.open
            and self.state == "running"
        )

    def mark(self) -> Mark | None:
        c = self.client
        ws = c.ws if c is not None else None
        if ws is None or ws.session_id is None or ws.sequence is None:
            return None
        if ws.open:
            self.last_alive = time.time()
        return Mark(self.epoch, ws.session_id, ws.sequence, str(ws.gateway))

    def _set_state(self, state: str) -> None:
        for s in ("starting", "running", "stopping"):
            metrics.SHARD_STATE.labels(str(self.shard_id), s).set(1 if s == state else 0)
        self.state = state

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._set_state("starting")
        app = self.app
        stored = await app.load_shard_state(self)
        resume: dict[str, Any] | None = None
        if stored is not None:
            resume = {
                "session": stored["session_id"],
                "sequence": stored["seq"],
                "gateway": stored["resume_url"],
            }
            self.last_alive = stored["alive"]
            self.resumed_from_store = True
        client = CaptureClient(
            shard_id=self.shard_id,
            shard_count=app.shard_count,
            message_content=app.discord_settings.message_content_intent,
            guild_ready_timeout=app.settings.guild_ready_timeout_seconds,
            before_identify=self._before_identify,
            wait_for_room=app.buffer.wait_for_room,
        )
        client.install_parsers(*self._parsers())
        tree: app_commands.CommandTree[CaptureClient] | None = None
        if app.commands is not None:
            tree = app_commands.CommandTree(client)
            install(tree, app.commands)
        self.client = client
        await client.login(app.token)
        if tree is not None and self.shard_id == 0:
            # Exactly one pod owns shard 0 at a time, so the global command list is
            # published once per (re)start of that shard rather than by every pod.
            await tree.sync()
        self.task = asyncio.get_running_loop().create_task(
            self._run(client, resume), name=f"herwa-shard-{self.shard_id}"
        )
        if app.settings.backfill_enabled:
            await app.backfiller.resume_pending(self)
        self._set_state("running")

    async def _run(self, client: CaptureClient, resume: dict[str, Any] | None) -> None:
        try:
            await client.run_gateway(resume)
        except Exception:
            log.exception("shard %s gateway loop ended with an error", self.shard_id)
            self.app.shard_failed(self)

    async def _before_identify(self, shard_id: int) -> None:
        await self.app.coordinator.identify_slot(shard_id)

    async def stop(self, timeout: float) -> None:
        """Close the gateway resumably, flush every row it produced (and its gateway mark),
        then forget its guilds. The caller releases the lease afterwards."""
        self._set_state("stopping")
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop_gateway(), timeout)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            if not self.task.done():
                self.task.cancel()
        await self.app.buffer.flush(timeout)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        self.app.voice.drop_guilds(self.guilds)
        for s in ("starting", "running", "stopping"):
            with contextlib.suppress(KeyError):
                metrics.SHARD_STATE.remove(str(self.shard_id), s)
        with contextlib.suppress(KeyError):
            metrics.SHARD_LATENCY.remove(str(self.shard_id))

    # -- raw parsers ----------------------------------------------------------------------
    def _parsers(self) -> tuple[dict[str, Parser], dict[str, Parser]]:
        app = self.app
        buf = app.buffer
        add = buf.add
        add_many = buf.add_many
        add_extra = buf.add_extra
        directory = app.directory
        voice = app.voice
        events = metrics.GATEWAY_EVENTS
        sid = self.shard_id
        label = str(sid)
        k_create = (label, "MESSAGE_CREATE")
        k_update = (label, "MESSAGE_UPDATE")
        content = app.discord_settings.message_content_intent

        def message_create(d: Json) -> None:
            events[k_create] += 1
            row = message_row(d, directory, content=content)
            if row is not None:
                add("message_events", row)

        def message_update(d: Json) -> None:
            events[k_update] += 1
            row = edit_row(d, directory)
            if row is not None:
                add("message_edits", row)

        def counted(name: str, fn: Parser) -> Parser:
            key = (label, name)

            def run(d: Json) -> None:
                events[key] += 1
                fn(d)

            return run

        def message_delete(d: Json) -> None:
            add_many("message_deletions", deletion_rows(d, directory, datetime.now(UTC)))

        def voice_state(raw: Json) -> None:
            d = voice_state_payload(raw)
            if d is None:
                return
            rows, ops = voice.update(d, received(), sid)
            if rows:
                add_many("voice_sessions", rows)
            for op in ops:
                add_extra(op)

        def member_add(d: Json) -> None:
            row = member_join_row(d)
            if row is None:
                return
            add("member_events", row)
            gid = row[0]
            directory.member_delta(gid, 1)
            self._member_count(gid)

        def member_remove(d: Json) -> None:
            row = member_leave_row(d, received_dt())
            if row is None:
                return
            add("member_events", row)
            gid = row[0]
            directory.member_delta(gid, -1)
            self._member_count(gid)

        def ignore(d: Json) -> None:
            return None

        def guild_create(raw: Json) -> None:
            if raw.get("unavailable"):
                return
            d = guild_payload(raw)  # validated: only what capture may trust
            if d is None:
                return
            # discord.py parses the same payload next (a string count breaks it): it gets the
            # count capture could read, and of the members only the bot itself — it caches no
            # members, yet would build an object for each one.
            raw["member_count"] = d["member_count"]
            me = self.client.user.id if self.client is not None and self.client.user else None
            raw["members"] = [
                m
                for m in raw.get("members") or ()
                if isinstance(m, dict) and str((m.get("user") or {}).get("id")) == str(me)
            ]
            gid = d["id"]
            directory.add_guild(d)
            self.guilds.add(gid)
            if gid in app.tombstones:  # a deleted server: its channels, none of its data
                app.guild_available(self, d)
                return
            now = received()
            bots = {m["user"]["id"] for m in d["members"] if m["user"]["bot"]}
            rows, ops = voice.reconcile(gid, d["voice_states"], bots, now, self.last_alive, sid)
            add_many("voice_sessions", rows)
            for op in ops:
                add_extra(op)
            add("guild_events", guild_join_row(d))
            self._member_count(gid)
            app.guild_available(self, d)

        def guild_delete(d: Json) -> None:
            if d.get("unavailable"):
                return  # an outage, not a leave
            gid = snowflake(d.get("id"), "id")
            now = received()
            rows, ops = voice.close_guild(gid, now, "guild_left", sid)
            add_many("voice_sessions", rows)
            for op in ops:
                add_extra(op)
            if gid not in app.tombstones:
                add(
                    "guild_events",
                    (gid, "leave", received_dt(), directory.member_counts.get(gid)),
                )
            directory.forget_guild(gid)
            self.guilds.discard(gid)
            app.guild_left(gid)

        def channel_upsert(raw: Json) -> None:
            d = channel_payload(raw)
            gid = d.get("guild_id") if d is not None else None
            if d is not None and gid is not None:
                directory.add_channel(gid, d)
                app.channel_changed(gid, d)

        def channel_delete(d: Json) -> None:
            directory.remove_channel(int(d["id"]))

        def thread_list_sync(d: Json) -> None:
            gid = snowflake(d.get("guild_id"), "guild_id")
            for t in d.get("threads", ()):
                thread = channel_payload(t)
                if thread is not None:
                    directory.add_channel(gid, thread)

        identified = metrics.GATEWAY_SESSIONS.labels(label, "identify")
        resumed_session = metrics.GATEWAY_SESSIONS.labels(label, "resume")

        def ready(d: Json) -> None:
            self.session_seen = True
            identified.inc()

        def resumed(d: Json) -> None:
            self.session_seen = True
            resumed_session.inc()

        capture: dict[str, Parser] = {
            "MESSAGE_CREATE": message_create,
            "MESSAGE_UPDATE": message_update,
            "MESSAGE_DELETE": counted("MESSAGE_DELETE", message_delete),
            "MESSAGE_DELETE_BULK": counted("MESSAGE_DELETE_BULK", message_delete),
            "VOICE_STATE_UPDATE": counted("VOICE_STATE_UPDATE", voice_state),
            "GUILD_MEMBER_ADD": counted("GUILD_MEMBER_ADD", member_add),
            "GUILD_MEMBER_REMOVE": counted("GUILD_MEMBER_REMOVE", member_remove),
            "GUILD_MEMBER_UPDATE": counted("GUILD_MEMBER_UPDATE", ignore),
            "TYPING_START": counted("TYPING_START", ignore),
        }
        # Nothing of a server whose data was deleted is recorded (bot/tombstones.py).
        replace = {event: app.tombstones.honoured(fn) for event, fn in capture.items()}
        wrap: dict[str, Parser] = {
            "GUILD_CREATE": counted("GUILD_CREATE", guild_create),
            "GUILD_DELETE": counted("GUILD_DELETE", guild_delete),
            "CHANNEL_CREATE": counted("CHANNEL_CREATE", channel_upsert),
            "CHANNEL_UPDATE": counted("CHANNEL_UPDATE", channel_upsert),
            "CHANNEL_DELETE": counted("CHANNEL_DELETE", channel_delete),
            "THREAD_CREATE": counted("THREAD_CREATE", channel_upsert),
            "THREAD_UPDATE": counted("THREAD_UPDATE", channel_upsert),
            "THREAD_DELETE": counted("THREAD_DELETE", channel_delete),
            "THREAD_LIST_SYNC": counted("THREAD_LIST_SYNC", thread_list_sync),
            "READY": counted("READY", ready),
            "RESUMED": counted("RESUMED", resumed),
            # Only counted here: discord.py's parser hands it to the command tree, which
            # records usage with the command's outcome.
            "INTERACTION_CREATE": counted("INTERACTION_CREATE", ignore),
        }
        # Resharding: one fleet generation records at a time (bot/generations.py).
        return app.fleet.gate(self, replace, wrap)

    def _member_count(self, guild_id: int) -> None:
        count = self.app.directory.member_counts.get(guild_id)
        if count is not None:
            self.app.buffer.add_extra(MemberCountOp(self.shard_id, guild_id, count))


__all__ = ["Mark", "MemberCountOp", "ShardRunner", "VoiceOp"]
