"""Raw gateway payloads → staging rows. Pure functions (apart from counting what they cannot
read): no I/O, no discord.py models.

Handlers call these and hand the rows to the buffer; nothing here decides anything beyond what
a row must contain. Rows are tuples in the column order of :data:`herwa.bot.buffer.TABLES`.

Without the privileged MESSAGE_CONTENT intent Discord sends ``content`` empty and ``embeds`` and
``attachments`` as empty lists for other users' messages. ``type`` (reply, system),
``sticker_items`` and ``message_reference`` still arrive, so stickers, replies and system messages
are classified exactly; attachment and embed messages are indistinguishable from plain text and
are recorded as ``text``. That is the documented loss of running without the intent.

Every field taken from a payload is validated here, before it can reach a row Postgres would
refuse (one refused row used to stall a pod's whole buffer): snowflakes are ints or decimal
strings in 1..2**63-1 (bigint), counts fit their ``integer`` column, timestamps are ISO 8601
strings, text has no NUL byte or lone surrogate and a bounded length. A payload whose required
field is unreadable yields no row; an unreadable descriptive field (message type, member count,
a name) is recorded as unknown / NULL / cleaned. Both are counted in
``herwa_bot_payload_rejections_total{event, reason}`` (reason: the field) and logged; the capture
functions never raise.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

from herwa.bot import metrics
from herwa.bot.directory import Directory
from herwa.json_types import Json

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

DISCORD_EPOCH_MS = 1_420_070_400_000
# Message types that are ordinary user messages; everything else is a system message.
_DEFAULT, _REPLY, _CHAT_INPUT, _CONTEXT_MENU = 0, 19, 20, 23
_USER_TYPES = frozenset((_DEFAULT, _REPLY, _CHAT_INPUT, _CONTEXT_MENU))
_VOICE_NAMESPACE = uuid.UUID("5b0e4e1c-3a57-4a43-9d0c-8f3f3c1e7a11")

# Column bounds: snowflakes are bigint, counts and channel types integer.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Discord caps guild and channel names at 100 characters; the margin keeps any real name whole
# while a megabyte "name" cannot reach Postgres.
NAME_MAX = 200
# An ISO 8601 timestamp with microseconds and offset is 32 characters.
_TIMESTAMP_MAX = 40
_SNOWFLAKE_DIGITS = 19

P = ParamSpec("P")
R = TypeVar("R")


class BadPayload(ValueError):
    """A payload field capture cannot read; ``reason`` (the field's name) is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def rejected(event: str, reason: str) -> None:
    """Count (and log) a payload, or one field of it, that capture could not read."""
    metrics.PAYLOAD_REJECTIONS.labels(event, reason).inc()
    log.warning("unreadable %s payload: %s", event, reason)


def reads(event: str, empty: Callable[[], object]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A capture function that never raises: an unreadable payload is counted under ``event``
    and yields ``empty()`` (no row)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def read(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except BadPayload as exc:
                rejected(event, exc.reason)
            except Exception:  # a shape no validator anticipated: a list for a dict, …
                rejected(event, "malformed")
            return cast(R, empty())

        return read

    return wrap


def snowflake(value: Any, field: str) -> int:
    """A Discord id: a decimal string (as the gateway sends it) or an int, in 1..2**63-1."""
    if isinstance(value, str):  # the gateway's case, read a few times per event: tests first
        if not (value.isascii() and value.isdigit() and 0 < len(value) <= _SNOWFLAKE_DIGITS):
            raise BadPayload(field)
        n = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise BadPayload(field)
    if not 0 < n <= INT64_MAX:
        raise BadPayload(field)
    return n


def optional_snowflake(value: Any, field: str) -> int | None:
    return None if value is None else snowflake(value, field)


def int32(value: Any, field: str, *, minimum: int = 0) -> int:
    """A count or a type: an int (never a bool or a numeric string) that fits ``integer``."""
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= INT32_MAX:
        return value
    raise BadPayload(field)


def timestamp(value: Any, field: str) -> datetime:
    """An ISO 8601 string, as an aware UTC datetime (naive means UTC)."""
    if not isinstance(value, str) or len(value) > _TIMESTAMP_MAX:
        raise BadPayload(field)
    try:
        at = datetime.fromisoformat(value)
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadPayload(field) from None


def clean_text(value: Any, field: str, event: str, *, limit: int = NAME_MAX) -> str | None:
    """A name as Postgres can store it. Not a string: NULL. NUL bytes (``text`` refuses them)
    are removed, lone surrogates (not encodable as UTF-8) replaced by U+FFFD, the length
    bounded; each of these is counted, and the rest of the payload is kept."""
    if value is None:
        return None
    if not isinstance(value, str):
        rejected(event, field)
        return None
    cleaned = value
    if "\x00" in cleaned:
        cleaned = cleaned.replace("\x00", "")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs of surrogates become the character they encode; lone ones become U+FFFD.
        cleaned = cleaned.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    cleaned = cleaned[:limit]
    if cleaned != value:
        rejected(event, field)
    return cleaned


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, UTC)


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


def _author(d: Json) -> Json:
    author = d.get("author")
    if not isinstance(author, dict):
        raise BadPayload("author")
    return author


def read_message(
    d: Json,
    directory: Directory,
    *,
    source: str = "gateway",
    guild_id: int | None = None,
    content: bool = True,
) -> Row | None:
    """:func:`message_row` for a caller that counts what it cannot read itself: raises
    :class:`BadPayload` (or whatever an unforeseen shape raises) instead. The gateway's parsers
    are guarded that way already (``herwa.bot.client``), and this is read for every message."""
    if guild_id is None:
        raw_guild = d.get("guild_id")
        if raw_guild is None:
            return None
        guild_id = snowflake(raw_guild, "guild_id")
    author = _author(d)
    is_bot = is_bot_author(d)
    config = directory.config(guild_id)
    if is_bot and not config.count_bot_messages:
        return None
    channel_id = snowflake(d.get("channel_id"), "channel_id")
    thread_id = None
    parent = directory.thread_parent(channel_id)
    if parent is not None:
        channel_id, thread_id = parent, channel_id
    if not config.tracks(channel_id):
        return None
    mid = snowflake(d.get("id"), "id")
    author_id = snowflake(author.get("id"), "author_id")
    message_type = d.get("type", 0)
    if isinstance(message_type, int) and not isinstance(message_type, bool):
        kind = message_kind(d, content)
    else:
        rejected("MESSAGE_CREATE", "type")
        kind = "unknown"  # still a message: counted, of a kind nobody can tell
    return (
        mid,
        guild_id,
        channel_id,
        thread_id,
        author_id,
        snowflake_time(mid),
        kind,
        is_bot,
        source,
    )


# A ``message_events`` row, or ``None`` when the message is not tracked (a DM, an untracked
# channel, or a bot author in a guild that does not count bots) or cannot be read (counted).
message_row = reads("MESSAGE_CREATE", lambda: None)(read_message)


def _channel_pair(directory: Directory, guild_id: int, raw_channel: Any) -> tuple[int, bool]:
    """(parent-or-channel id, tracked?) for edits and deletions."""
    channel_id = snowflake(raw_channel, "channel_id")
    parent = directory.thread_parent(channel_id)
    if parent is not None:
        channel_id = parent
    return channel_id, directory.config(guild_id).tracks(channel_id)


@reads("MESSAGE_UPDATE", lambda: None)
def edit_row(d: Json, directory: Directory) -> Row | None:
    """A ``message_edits`` row. Updates without ``edited_timestamp`` (embed unfurls, pins)
    are not edits."""
    edited = d.get("edited_timestamp")
    raw_guild = d.get("guild_id")
    if not edited or raw_guild is None:
        return None
    guild_id = snowflake(raw_guild, "guild_id")
    channel_id, tracked = _channel_pair(directory, guild_id, d.get("channel_id"))
    if not tracked:
        return None
    return (
        snowflake(d.get("id"), "id"),
        timestamp(edited, "edited_timestamp"),
        guild_id,
        channel_id,
    )


@reads("MESSAGE_DELETE", list)
def deletion_rows(d: Json, directory: Directory, now: datetime) -> list[Row]:
    """``message_deletions`` rows for MESSAGE_DELETE (``id``) or MESSAGE_DELETE_BULK
    (``ids``)."""
    raw_guild = d.get("guild_id")
    if raw_guild is None:
        return []
    guild_id = snowflake(raw_guild, "guild_id")
    channel_id, tracked = _channel_pair(directory, guild_id, d.get("channel_id"))
    if not tracked:
        return []
    ids = d.get("ids") or [d.get("id")]
    if not isinstance(ids, list):
        raise BadPayload("ids")
    return [(snowflake(i, "id"), guild_id, channel_id, now) for i in ids]


# A unicode emoji is a few code points (a family, a flag with its tag sequence); the margin keeps
# any real one whole.
EMOJI_MAX = 64


def _emoji(raw: Any, event: str) -> tuple[str, str | None]:
    """(key, custom name): a custom emoji is keyed by its id (its name can change), a unicode
    one by itself."""
    if not isinstance(raw, dict):
        raise BadPayload("emoji")
    if raw.get("id") is not None:
        name = clean_text(raw.get("name"), "emoji_name", event)
        return str(snowflake(raw["id"], "emoji_id")), name
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > EMOJI_MAX:
        raise BadPayload("emoji_name")
    cleaned = clean_text(name, "emoji_name", event, limit=EMOJI_MAX)
    if not cleaned:
        raise BadPayload("emoji_name")
    return cleaned, None


def _reaction(event: str, d: Json, directory: Directory, now: datetime) -> Row | None:
    raw_guild = d.get("guild_id")
    if raw_guild is None:
        return None
    guild_id = snowflake(raw_guild, "guild_id")
    channel_id, tracked = _channel_pair(directory, guild_id, d.get("channel_id"))
    if not tracked:
        return None
    source = "MESSAGE_REACTION_ADD" if event == "add" else "MESSAGE_REACTION_REMOVE"
    emoji, emoji_name = _emoji(d.get("emoji"), source)
    return (
        guild_id,
        channel_id,
        snowflake(d.get("message_id"), "message_id"),
        snowflake(d.get("user_id"), "user_id"),
        emoji,
        emoji_name,
        event,
        now,
    )


@reads("MESSAGE_REACTION_ADD", lambda: None)
def reaction_add_row(d: Json, directory: Directory, now: datetime) -> Row | None:
    """A ``message_reactions`` add row, stamped ``now`` (Discord sends no time); ``None``
    outside a guild or a tracked channel."""
    return _reaction("add", d, directory, now)


@reads("MESSAGE_REACTION_REMOVE", lambda: None)
def reaction_remove_row(d: Json, directory: Directory, now: datetime) -> Row | None:
    return _reaction("remove", d, directory, now)


def _member(d: Json) -> tuple[int, int, bool]:
    """(guild, user, is bot) of a GUILD_MEMBER_* payload."""
    user = d.get("user")
    if not isinstance(user, dict):
        raise BadPayload("user")
    return (
        snowflake(d.get("guild_id"), "guild_id"),
        snowflake(user.get("id"), "user_id"),
        bool(user.get("bot")),
    )


@reads("GUILD_MEMBER_ADD", lambda: None)
def member_join_row(d: Json) -> Row | None:
    gid, uid, is_bot = _member(d)
    at = datetime.now(UTC)
    if d.get("joined_at"):
        try:
            at = timestamp(d["joined_at"], "joined_at")
        except BadPayload as exc:  # the join happened; its receive time is the next best
            rejected("GUILD_MEMBER_ADD", exc.reason)
    return (gid, uid, "join", at, snowflake_time(uid), is_bot)


@reads("GUILD_MEMBER_REMOVE", lambda: None)
def member_leave_row(d: Json, now: datetime) -> Row | None:
    # GUILD_MEMBER_REMOVE carries no time: the receive time is the best there is.
    gid, uid, is_bot = _member(d)
    return (gid, uid, "leave", now, snowflake_time(uid), is_bot)


def guild_event_row(guild_id: int, event: str, at: datetime, member_count: int | None) -> Row:
    return (guild_id, event, at, member_count)


# -- payloads the bot keeps (directory, voice tracker, metadata writer) ---------------------
# These return a validated copy holding only the fields the bot reads, so the directory, the
# voice tracker, the daily snapshot and the metadata writer never see an unreadable value.


def _optional_count(d: Json, field: str, event: str) -> int | None:
    value = d.get(field)
    if value is None:
        return None
    try:
        return int32(value, field)
    except BadPayload as exc:
        rejected(event, exc.reason)
        return None


def _bool(value: Any) -> bool:
    return value is True


def _channel(c: Any, event: str) -> Json:
    if not isinstance(c, dict):
        raise BadPayload("channel")
    out: Json = {"id": snowflake(c.get("id"), "channel_id"), "type": 0}
    kind = c.get("type", 0)
    try:
        out["type"] = int32(kind, "channel_type")
    except BadPayload as exc:
        rejected(event, exc.reason)  # kept as a plain text channel
    parent = c.get("parent_id")
    try:
        out["parent_id"] = optional_snowflake(parent, "parent_id")
    except BadPayload as exc:
        rejected(event, exc.reason)
        out["parent_id"] = None
    out["name"] = clean_text(c.get("name"), "name", event)
    if c.get("guild_id") is not None:
        out["guild_id"] = snowflake(c["guild_id"], "guild_id")
    return out


def _voice_state(s: Any, guild_id: int | None) -> Json:
    if not isinstance(s, dict):
        raise BadPayload("voice_state")
    raw_guild = s.get("guild_id")
    member = s.get("member")
    user = member.get("user") if isinstance(member, dict) else None
    return {
        "guild_id": guild_id if raw_guild is None else snowflake(raw_guild, "guild_id"),
        "user_id": snowflake(s.get("user_id"), "user_id"),
        "channel_id": optional_snowflake(s.get("channel_id"), "channel_id"),
        "self_mute": _bool(s.get("self_mute")),
        "mute": _bool(s.get("mute")),
        "member": {"user": {"bot": _bool(user.get("bot")) if isinstance(user, dict) else False}},
    }


def _each(items: Any, event: str, read: Callable[[Any], Json]) -> list[Json]:
    """The readable entries of a list field; each unreadable one is counted and left out."""
    if items is None:
        return []
    if not isinstance(items, list):
        rejected(event, "list")
        return []
    out = []
    for item in items:
        try:
            out.append(read(item))
        except BadPayload as exc:
            rejected(event, exc.reason)
        except Exception:
            rejected(event, "malformed")
    return out


# Discord's image hash: 32 hex digits, "a_" first for an animated image.
_ICON_HASH = re.compile(r"(a_)?[0-9a-f]{32}")


def _profile(d: Json, event: str) -> Json:
    """Name, icon and owner of a GUILD_CREATE or GUILD_UPDATE: what is unreadable is counted
    and kept as NULL."""
    icon = d.get("icon")
    if icon is not None and not (isinstance(icon, str) and _ICON_HASH.fullmatch(icon)):
        rejected(event, "icon")
        icon = None
    owner = d.get("owner_id")
    if owner is not None:
        try:
            owner = snowflake(owner, "owner_id")
        except BadPayload as exc:
            rejected(event, exc.reason)
            owner = None
    return {"name": clean_text(d.get("name"), "name", event), "icon": icon, "owner_id": owner}


@reads("GUILD_UPDATE", lambda: None)
def guild_update_payload(d: Json) -> Json | None:
    """GUILD_UPDATE as the bot keeps it: the server's id, name, icon and owner."""
    return {"id": snowflake(d.get("id"), "id"), **_profile(d, "GUILD_UPDATE")}


@reads("GUILD_CREATE", lambda: None)
def guild_payload(d: Json) -> Json | None:
    """GUILD_CREATE as the bot keeps it: id, name, icon, owner, member count, joined_at,
    channels and threads, voice states and the ids of bot members. An unreadable channel or
    voice state is left out (counted); an unreadable member count or join time is dropped
    (counted)."""
    event = "GUILD_CREATE"
    gid = snowflake(d.get("id"), "id")
    joined = d.get("joined_at")
    if joined is not None:
        try:
            timestamp(joined, "joined_at")
        except BadPayload as exc:
            rejected(event, exc.reason)
            joined = None

    def bot_member(m: Any) -> Json:
        user = m.get("user") if isinstance(m, dict) else None
        if not isinstance(user, dict):
            raise BadPayload("member")
        return {"user": {"id": snowflake(user.get("id"), "user_id"), "bot": _bool(user.get("bot"))}}

    return {
        "id": gid,
        **_profile(d, event),
        "member_count": _optional_count(d, "member_count", event),
        "joined_at": joined,
        "channels": _each(d.get("channels"), event, lambda c: _channel(c, event)),
        "threads": _each(d.get("threads"), event, lambda c: _channel(c, event)),
        "voice_states": _each(d.get("voice_states"), event, lambda s: _voice_state(s, gid)),
        # Only the bots (voice reconciliation leaves them out): this payload waits in the
        # metadata queue, and after an IDENTIFY thousands of guilds wait there at once, so a
        # list of every member would make the burst's memory peak — and what the process
        # keeps of it afterwards — grow with the members instead of the guilds.
        "members": [m for m in _each(d.get("members"), event, bot_member) if m["user"]["bot"]],
    }


def guild_join_row(g: Json) -> Row:
    """The ``guild_events`` join row of a payload from :func:`guild_payload`."""
    joined = g["joined_at"]
    at = timestamp(joined, "joined_at") if joined else datetime.now(UTC)
    return guild_event_row(g["id"], "join", at, g["member_count"])


@reads("CHANNEL_UPDATE", lambda: None)
def channel_payload(d: Json) -> Json | None:
    """A CHANNEL_* / THREAD_* payload as the bot keeps it (id, type, parent, name, guild)."""
    return _channel(d, "CHANNEL_UPDATE")


@reads("VOICE_STATE_UPDATE", lambda: None)
def voice_state_payload(d: Json) -> Json | None:
    """VOICE_STATE_UPDATE as the voice tracker reads it; DMs (no guild) stay guild-less."""
    return _voice_state(d, None)


def voice_session_id(
    guild_id: int, user_id: int, channel_id: int, joined_at: datetime
) -> uuid.UUID:
    """Deterministic, so a session closed twice (reconcile + leave, a retried flush) is one row."""
    key = f"{guild_id}:{user_id}:{channel_id}:{int(joined_at.timestamp() * 1_000_000)}"
    return uuid.uuid5(_VOICE_NAMESPACE, key)


# -- presence ---------------------------------------------------------------------------------

PRESENCE_STATUSES = ("online", "idle", "dnd", "offline")
# Discord's activity types: 0 playing, 1 streaming, 2 listening, 3 watching, 4 custom status,
# 5 competing. A row holds the set as bits (bit n: type n).
ACTIVITY_TYPES = 6


@reads("PRESENCE_UPDATE", lambda: None)
def presence_row(d: Json, now: datetime) -> Row | None:
    """A ``presence_events`` row: (guild, user, receive time, status, activity-type bits).
    Discord sends no time; ``now`` is the receive time. An unreadable activity is left out
    (counted); an unreadable status, user or guild yields no row."""
    event = "PRESENCE_UPDATE"
    user = d.get("user")
    if not isinstance(user, dict):
        raise BadPayload("user")
    guild_id = snowflake(d.get("guild_id"), "guild_id")
    user_id = snowflake(user.get("id"), "user_id")
    status = d.get("status")
    if status not in PRESENCE_STATUSES:
        raise BadPayload("status")
    activities = d.get("activities")
    if activities is None:
        activities = []
    if not isinstance(activities, list):
        raise BadPayload("activities")
    types = 0
    for activity in activities:
        kind = activity.get("type") if isinstance(activity, dict) else None
        if isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind < ACTIVITY_TYPES:
            types |= 1 << kind
        else:
            rejected(event, "activity_type")
    return (guild_id, user_id, now, status, types)
