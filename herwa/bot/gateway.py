"""The gateway handler table of one shard: for each recorded event, read the payload into rows
(:mod:`herwa.bot.capture`), then hand them off — to the buffer, the directory, the voice
tracker, the metadata writer, the backfill. Nothing here waits: the handlers run inside
discord.py's read loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from herwa.bot import metrics
from herwa.bot.capture import (
    channel_payload,
    deletion_rows,
    edit_row,
    guild_event_row,
    guild_join_row,
    guild_payload,
    guild_update_payload,
    member_join_row,
    member_leave_row,
    presence_row,
    reaction_add_row,
    reaction_remove_row,
    read_message,
    snowflake,
    voice_state_payload,
)
from herwa.bot.client import CaptureClient, Parser
from herwa.bot.deps import ShardDeps
from herwa.bot.event_order import received, received_dt
from herwa.bot.presence import PresenceTransitions
from herwa.bot.shard_state import MemberCountOp
from herwa.json_types import Json


class GatewayShard(Protocol):
    """The shard runner as its handlers see it."""

    shard_id: int
    client: CaptureClient | None
    guilds: set[int]  # the guilds this shard has announced
    last_alive: float  # when the shard was last known alive (voice reconcile closes there)
    session_seen: bool  # READY or RESUMED came: the gateway session is live


def handlers(shard: GatewayShard, deps: ShardDeps) -> tuple[dict[str, Parser], dict[str, Parser]]:
    """(replace, wrap) for :meth:`CaptureClient.install_parsers`: ``replace`` are the events
    discord.py never sees, ``wrap`` run before discord.py's own parser."""
    buf = deps.buffer
    add = buf.add
    add_many = buf.add_many
    add_extra = buf.add_extra
    directory = deps.directory
    voice = deps.voice
    tombstones = deps.tombstones
    metadata = deps.metadata
    events = metrics.GATEWAY_EVENTS
    sid = shard.shard_id
    label = str(sid)
    k_create = (label, "MESSAGE_CREATE")
    k_update = (label, "MESSAGE_UPDATE")
    content = deps.message_content
    # The last presence of each member, for this gateway session of this shard only.
    presence = PresenceTransitions(deps.presence)

    def member_count(guild_id: int) -> None:
        count = directory.member_counts.get(guild_id)
        if count is not None:
            add_extra(MemberCountOp(sid, guild_id, count))

    def message_create(d: Json) -> None:
        events[k_create] += 1
        # Unguarded: an unreadable payload raises into the guard of install_parsers, which
        # counts it under MESSAGE_CREATE as message_row would.
        row = read_message(d, directory, content=content)
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
        member_count(gid)

    def member_remove(d: Json) -> None:
        row = member_leave_row(d, received_dt())
        if row is None:
            return
        add("member_events", row)
        gid = row[0]
        directory.member_delta(gid, -1)
        member_count(gid)

    def reaction_add(d: Json) -> None:
        row = reaction_add_row(d, directory, received_dt())
        if row is not None:
            add("message_reactions", row)

    def reaction_remove(d: Json) -> None:
        row = reaction_remove_row(d, directory, received_dt())
        if row is not None:
            add("message_reactions", row)

    def presence_update(d: Json) -> None:
        row = presence_row(d, received_dt())
        if row is not None and presence.changed(row):
            add("presence_events", row)

    def ignore(d: Json) -> None:
        return None

    def guild_available(d: Json) -> None:
        metadata.guild_available(d)
        if deps.settings.backfill_enabled:
            deps.backfiller.schedule(shard, int(d["id"]))

    def guild_update(raw: Json) -> None:
        d = guild_update_payload(raw)
        if d is not None:
            metadata.guild_updated(d)

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
        client = shard.client
        me = client.user.id if client is not None and client.user else None
        raw["members"] = [
            m
            for m in raw.get("members") or ()
            if isinstance(m, dict) and str((m.get("user") or {}).get("id")) == str(me)
        ]
        # With the presence intent every online member's presence comes along: none is
        # recorded (a transition is a change seen live) and discord.py caches no member.
        raw.pop("presences", None)
        gid = d["id"]
        directory.add_guild(d)
        shard.guilds.add(gid)
        if gid in tombstones:  # a deleted server: its channels, none of its data
            guild_available(d)
            return
        now = received()
        bots = {m["user"]["id"] for m in d["members"] if m["user"]["bot"]}
        rows, ops = voice.reconcile(gid, d["voice_states"], bots, now, shard.last_alive, sid)
        add_many("voice_sessions", rows)
        for op in ops:
            add_extra(op)
        add("guild_events", guild_join_row(d))
        member_count(gid)
        guild_available(d)

    def guild_delete(d: Json) -> None:
        if d.get("unavailable"):
            return  # an outage, not a leave
        gid = snowflake(d.get("id"), "id")
        now = received()
        rows, ops = voice.close_guild(gid, now, "guild_left", sid)
        add_many("voice_sessions", rows)
        for op in ops:
            add_extra(op)
        if gid not in tombstones:
            add(
                "guild_events",
                guild_event_row(gid, "leave", received_dt(), directory.member_counts.get(gid)),
            )
        directory.forget_guild(gid)
        presence.forget((gid,))
        shard.guilds.discard(gid)
        metadata.guild_left(gid)

    def channel_upsert(raw: Json) -> None:
        d = channel_payload(raw)
        gid = d.get("guild_id") if d is not None else None
        if d is not None and gid is not None:
            directory.add_channel(gid, d)
            metadata.channel_changed(gid, d)

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
        shard.session_seen = True
        presence.forget()  # a new session: what happened since the last one is unknown
        identified.inc()

    def resumed(d: Json) -> None:
        shard.session_seen = True
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
        "PRESENCE_UPDATE": counted("PRESENCE_UPDATE", presence_update),
        "TYPING_START": counted("TYPING_START", ignore),
        "MESSAGE_REACTION_ADD": counted("MESSAGE_REACTION_ADD", reaction_add),
        "MESSAGE_REACTION_REMOVE": counted("MESSAGE_REACTION_REMOVE", reaction_remove),
        # A moderator clearing a message's reactions (all, or one emoji) names no member: the
        # reactions stay counted as given, so these are only counted.
        "MESSAGE_REACTION_REMOVE_ALL": counted("MESSAGE_REACTION_REMOVE_ALL", ignore),
        "MESSAGE_REACTION_REMOVE_EMOJI": counted("MESSAGE_REACTION_REMOVE_EMOJI", ignore),
    }
    # Nothing of a server whose data was deleted is recorded (bot/tombstones.py).
    replace = {event: tombstones.honoured(fn) for event, fn in capture.items()}
    wrap: dict[str, Parser] = {
        "GUILD_CREATE": counted("GUILD_CREATE", guild_create),
        "GUILD_UPDATE": counted("GUILD_UPDATE", guild_update),
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
    return replace, wrap
