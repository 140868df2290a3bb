"""Raw gateway payloads → staging rows. Pure functions: no I/O, no discord.py models.

Handlers call these and hand the rows to the buffer; nothing here decides anything beyond what
a row must contain. Rows are tuples in the column order of :data:`herwa.bot.buffer.TABLES`.

Without the privileged MESSAGE_CONTENT intent Discord sends ``content`` empty and ``embeds`` and
``attachments`` as empty lists for other users' messages. ``type`` (reply, system),
``sticker_items`` and ``message_reference`` still arrive, so stickers, replies and system messages
are classified exactly; attachment and embed messages are indistinguishable from plain text and
are recorded as ``text``. That is the documented loss of running without the intent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from herwa.bot.directory import Directory

Json = dict[str, Any]
Row = tuple[Any, ...]

DISCORD_EPOCH_MS = 1_420_070_400_000
# Message types that are ordinary user messages; everything else is a system message.
_DEFAULT, _REPLY, _CHAT_INPUT, _CONTEXT_MENU = 0, 19, 20, 23
_USER_TYPES = frozenset((_DEFAULT, _REPLY, _CHAT_INPUT, _CONTEXT_MENU))
STAGE_CHANNEL = 13
_VOICE_NAMESPACE = uuid.UUID("5b0e4e1c-3a57-4a43-9d0c-8f3f3c1e7a11")


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, UTC)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def message_kind(d: Json, content: bool = True) -> str:
    """``content=False``: the bot runs without MESSAGE_CONTENT; attachment and embed are
    folded into text even when a payload (e.g. REST history) happens to carry them, so a
    message's kind never depends on the path it arrived by."""
    t = d.get("type", 0)
    if t == _REPLY:
        return "reply"
    if t not in _USER_TYPES:
        return "system"
    if d.get("sticker_items"):
        return "sticker"
    if not content:
        return "text"
    if d.get("attachments"):
        return "attachment"
    if d.get("embeds"):
        return "embed"
    return "text"


def is_bot_author(d: Json) -> bool:
    # Webhook messages carry a fake author; they are automated, so they count as bots.
    return bool(d["author"].get("bot")) or "webhook_id" in d


def message_row(
    d: Json,
    directory: Directory,
    *,
    source: str = "gateway",
    guild_id: int | None = None,
    content: bool = True,
) -> Row | None:
    """A ``message_events`` row, or ``None`` when the message is not tracked (a DM, an
    untracked channel, or a bot author in a guild that does not count bots)."""
    if guild_id is None:
        raw_guild = d.get("guild_id")
        if raw_guild is None:
            return None
        guild_id = int(raw_guild)
    is_bot = is_bot_author(d)
    config = directory.config(guild_id)
    if is_bot and not config.count_bot_messages:
        return None
    channel_id = int(d["channel_id"])
    thread_id = None
    parent = directory.thread_parent(channel_id)
    if parent is not None:
        channel_id, thread_id = parent, channel_id
    tracked = config.tracked_channel_ids
    if tracked is not None and channel_id not in tracked:
        return None
    mid = int(d["id"])
    return (
        mid,
        guild_id,
        channel_id,
        thread_id,
        int(d["author"]["id"]),
        snowflake_time(mid),
        message_kind(d, content),
        is_bot,
        source,
    )


def _channel_pair(directory: Directory, guild_id: int, raw_channel: Any) -> tuple[int, bool]:
    """(parent-or-channel id, tracked?) for edits and deletions."""
    channel_id = int(raw_channel)
    parent = directory.thread_parent(channel_id)
    if parent is not None:
        channel_id = parent
    tracked = directory.config(guild_id).tracked_channel_ids
    return channel_id, tracked is None or channel_id in tracked


def edit_row(d: Json, directory: Directory) -> Row | None:
    """A ``message_edits`` row. Updates without ``edited_timestamp`` (embed unfurls, pins)
    are not edits."""
    edited = d.get("edited_timestamp")
    raw_guild = d.get("guild_id")
    if not edited or raw_guild is None:
        return None
    guild_id = int(raw_guild)
    channel_id, tracked = _channel_pair(directory, guild_id, d["channel_id"])
    if not tracked:
        return None
    return (int(d["id"]), parse_time(edited), guild_id, channel_id)


def deletion_rows(d: Json, directory: Directory, now: datetime) -> list[Row]:
    """``message_deletions`` rows for MESSAGE_DELETE (``id``) or MESSAGE_DELETE_BULK
    (``ids``)."""
    raw_guild = d.get("guild_id")
    if raw_guild is None:
        return []
    guild_id = int(raw_guild)
    channel_id, tracked = _channel_pair(directory, guild_id, d["channel_id"])
    if not tracked:
        return []
    ids = d.get("ids") or [d["id"]]
    return [(int(i), guild_id, channel_id, now) for i in ids]


def member_join_row(d: Json) -> Row:
    user = d["user"]
    uid = int(user["id"])
    at = parse_time(d["joined_at"]) if d.get("joined_at") else datetime.now(UTC)
    return (int(d["guild_id"]), uid, "join", at, snowflake_time(uid), bool(user.get("bot")))


def member_leave_row(d: Json, now: datetime) -> Row:
    # GUILD_MEMBER_REMOVE carries no time: the receive time is the best there is.
    user = d["user"]
    uid = int(user["id"])
    return (int(d["guild_id"]), uid, "leave", now, snowflake_time(uid), bool(user.get("bot")))


def guild_event_row(guild_id: int, event: str, at: datetime, member_count: int | None) -> Row:
    return (guild_id, event, at, member_count)


def voice_session_id(
    guild_id: int, user_id: int, channel_id: int, joined_at: datetime
) -> uuid.UUID:
    """Deterministic, so a session closed twice (reconcile + leave, a retried flush) is one row."""
    key = f"{guild_id}:{user_id}:{channel_id}:{int(joined_at.timestamp() * 1_000_000)}"
    return uuid.uuid5(_VOICE_NAMESPACE, key)
