"""Capture fuzzed (issue 18, "Bad input, fuzzed"): gateway payloads with wrong types, missing
and extra fields, huge strings and integers, NUL bytes and lone surrogates. For every capture
function: it never raises; a payload it cannot read is counted
(``herwa_bot_payload_rejections_total``) unless it is one the bot skips by design (a DM, an
update that is no edit); and everything it produces — staging rows, and the guild, channel and
voice-state payloads the directory, voice tracker and metadata writer consume — is accepted by
a real Postgres (through the bot's own buffer and metadata writer: no dead letters)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herwa.bot import metrics
from herwa.bot.buffer import FlushBuffer, Row
from herwa.bot.capture import (
    INT32_MAX,
    channel_payload,
    deletion_rows,
    edit_row,
    guild_join_row,
    guild_payload,
    guild_update_payload,
    member_join_row,
    member_leave_row,
    message_row,
    presence_row,
    voice_state_payload,
)
from herwa.bot.directory import Directory
from herwa.bot.guild_settings import GuildConfig
from herwa.bot.metadata import upsert_meta
from herwa.bot.voice import VoiceTracker
from herwa.devstack import Endpoints
from herwa.json_types import Json

EXAMPLES = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2025, 6, 1, tzinfo=UTC)

# Every code point, NUL and lone surrogates included.
CHARS = st.characters(exclude_categories=())
TEXT = st.text(CHARS, max_size=40) | st.just("x" * 100_000) | st.just("a\x00b") | st.just("\ud800")
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31 - 2, max_value=2**31 + 2)
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
ANY = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
VALID_ID = st.integers(min_value=1, max_value=2**63 - 1).map(str)
ID = (
    VALID_ID
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from(["0", "-1", "1e5", " 12", "\uff11\uff12", "9" * 19, "9" * 20])
    | ANY
)
VALID_TIMESTAMP = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(datetime.isoformat)
TIMESTAMP = (
    VALID_TIMESTAMP
    | st.sampled_from(
        ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2025-01-01", "yesterday"]
    )
    | ANY
)
VALID_COUNT = st.integers(min_value=0, max_value=2**31 - 1)
COUNT = st.integers(min_value=-5, max_value=2**40) | st.integers().map(str) | ANY
BOOL = st.booleans() | ANY
NAME = TEXT | ANY


def payload(
    valid: dict[str, st.SearchStrategy[Any]], bad: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """A valid payload; one with a single field replaced by a bad value; one with any subset of
    fields, each valid or bad; or not a dict at all. Every dict may carry unknown extra keys."""
    extra = st.dictionaries(TEXT, ANY, max_size=2)
    whole = st.fixed_dictionaries(valid)
    one_bad = st.sampled_from(sorted(bad)).flatmap(lambda k: bad[k].map(lambda v: {k: v}))
    subset = st.fixed_dictionaries(
        {}, optional={k: bad[k] if k not in valid else valid[k] | bad[k] for k in sorted(bad)}
    )
    merged = (
        st.builds(lambda e, w: {**e, **w}, extra, whole)
        | st.builds(lambda e, w, b: {**e, **w, **b}, extra, whole, one_bad)
        | st.builds(lambda e, k: {**e, **k}, extra, subset)
    )
    return merged | ANY


USER = payload({"id": VALID_ID, "bot": st.booleans()}, {"id": ID, "bot": BOOL})
MESSAGE = payload(
    {
        "id": VALID_ID,
        "channel_id": VALID_ID,
        "guild_id": VALID_ID,
        "author": USER,
        "type": st.sampled_from([0, 7, 19, 20, 23]),
        "sticker_items": st.just([]),
        "edited_timestamp": VALID_TIMESTAMP,
        "ids": st.lists(VALID_ID, min_size=1, max_size=3),
    },
    {
        "id": ID,
        "channel_id": ID,
        "guild_id": ID,
        "author": ANY,
        "type": COUNT,
        "webhook_id": ID,
        "sticker_items": ANY,
        "attachments": ANY,
        "embeds": ANY,
        "edited_timestamp": TIMESTAMP,
        "ids": st.lists(ID, max_size=4) | ANY,
    },
)
MEMBER = payload(
    {"guild_id": VALID_ID, "user": USER, "joined_at": VALID_TIMESTAMP},
    {"guild_id": ID, "user": ANY, "joined_at": TIMESTAMP},
)
CHANNEL = payload(
    {
        "id": VALID_ID,
        "type": st.sampled_from([0, 2, 4, 5, 11, 13, 15]),
        "parent_id": VALID_ID,
        "name": st.text(max_size=30),
        "guild_id": VALID_ID,
    },
    {"id": ID, "type": COUNT, "parent_id": ID, "name": NAME, "guild_id": ID},
)
VOICE = payload(
    {
        "guild_id": VALID_ID,
        "user_id": VALID_ID,
        "channel_id": VALID_ID,
        "self_mute": st.booleans(),
        "mute": st.booleans(),
        "member": payload({"user": USER}, {"user": ANY}),
    },
    {
        "guild_id": ID,
        "user_id": ID,
        "channel_id": ID,
        "self_mute": BOOL,
        "mute": BOOL,
        "member": ANY,
    },
)
ICON = st.from_regex(r"(a_)?[0-9a-f]{32}", fullmatch=True)
# GUILD_UPDATE, and the same profile fields in GUILD_CREATE.
PROFILE = {"id": VALID_ID, "name": st.text(max_size=30), "icon": ICON, "owner_id": VALID_ID}
BAD_PROFILE = {"id": ID, "name": NAME, "icon": NAME, "owner_id": ID}
GUILD_UPDATE = payload(PROFILE, BAD_PROFILE)
GUILD = payload(
    {
        **PROFILE,
        "member_count": VALID_COUNT,
        "joined_at": VALID_TIMESTAMP,
        "channels": st.lists(CHANNEL, max_size=3),
        "threads": st.lists(CHANNEL, max_size=2),
        "voice_states": st.lists(VOICE, max_size=3),
        "members": st.lists(payload({"user": USER}, {"user": ANY}), max_size=3),
    },
    {
        **BAD_PROFILE,
        "member_count": COUNT,
        "joined_at": TIMESTAMP,
        "channels": ANY,
        "threads": ANY,
        "voice_states": ANY,
        "members": ANY,
    },
)
ACTIVITY = payload(
    {"type": st.integers(min_value=0, max_value=5), "name": st.text(max_size=20)},
    {"type": COUNT, "name": NAME},
)
PRESENCE = payload(
    {
        "guild_id": VALID_ID,
        "user": USER,
        "status": st.sampled_from(["online", "idle", "dnd", "offline"]),
        "activities": st.lists(ACTIVITY, max_size=3),
        "client_status": st.just({}),
    },
    {"guild_id": ID, "user": ANY, "status": NAME, "activities": ANY, "client_status": ANY},
)


def _rejections(event: str) -> float:
    total = 0.0
    for family in metrics.PAYLOAD_REJECTIONS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("event") == event:
                total += sample.value
    return total


def _lacks(d: Any, key: str) -> bool:
    """A dict payload without ``key`` (or with it null / empty)."""
    return isinstance(d, dict) and not d.get(key)


def _check(event: str, read: Callable[[], Any], skipped_by_design: bool) -> Any:
    """Run one capture call: it must not raise, and it yields something or counts the payload
    (unless the bot skips such payloads by design)."""
    before = _rejections(event)
    out = read()
    assert out or skipped_by_design or _rejections(event) > before, (event, out)
    return out


async def test_fuzzed_capture_never_raises_counts_and_postgres_accepts_what_it_makes(
    migrated: Endpoints,
) -> None:
    # Every message counted, every channel tracked: a skip is then only a DM or a non-edit.
    directory = Directory(GuildConfig(count_bot_messages=True))
    voice = VoiceTracker(directory, max_hours=12)
    rows: dict[str, list[Row]] = {}
    guilds: list[Json] = []
    profiles: list[Json] = []
    channels: list[tuple[int, Json]] = []

    def keep(table: str, found: Row | list[Row] | None) -> None:
        if isinstance(found, list):
            rows.setdefault(table, []).extend(found)
        elif found is not None:
            rows.setdefault(table, []).append(found)

    @EXAMPLES
    @given(d=MESSAGE, content=st.booleans())
    def messages(d: Any, content: bool) -> None:
        dm = isinstance(d, dict) and d.get("guild_id") is None
        keep(
            "message_events",
            _check("MESSAGE_CREATE", lambda: message_row(d, directory, content=content), dm),
        )
        no_edit = dm or _lacks(d, "edited_timestamp")
        keep("message_edits", _check("MESSAGE_UPDATE", lambda: edit_row(d, directory), no_edit))
        keep(
            "message_deletions",
            _check("MESSAGE_DELETE", lambda: deletion_rows(d, directory, NOW), dm),
        )

    @EXAMPLES
    @given(d=MEMBER)
    def members(d: Any) -> None:
        keep("member_events", _check("GUILD_MEMBER_ADD", lambda: member_join_row(d), False))
        keep(
            "member_events",
            _check("GUILD_MEMBER_REMOVE", lambda: member_leave_row(d, NOW), False),
        )

    @EXAMPLES
    @given(d=PRESENCE, seconds=st.integers(min_value=0, max_value=10**6))
    def presences(d: Any, seconds: int) -> None:
        at = datetime.fromtimestamp(NOW.timestamp() + seconds / 1000, UTC)
        keep("presence_events", _check("PRESENCE_UPDATE", lambda: presence_row(d, at), False))

    @EXAMPLES
    @given(d=GUILD)
    def guild_creates(d: Any) -> None:
        g = _check("GUILD_CREATE", lambda: guild_payload(d), False)
        if g is None:
            return
        # What the shard runner does with it: directory, voice reconcile, the join row, and
        # the metadata writer (run below, against Postgres).
        directory.add_guild(g)
        assert 0 <= directory.member_counts.get(g["id"], 0) <= INT32_MAX
        bots = {m["user"]["id"] for m in g["members"] if m["user"]["bot"]}
        closed, _ = voice.reconcile(g["id"], g["voice_states"], bots, time.time(), 0.0, 0)
        keep("voice_sessions", closed)
        keep("guild_events", guild_join_row(g))
        guilds.append(g)

    @EXAMPLES
    @given(d=GUILD_UPDATE)
    def guild_updates(d: Any) -> None:
        p = _check("GUILD_UPDATE", lambda: guild_update_payload(d), False)
        if p is not None:
            profiles.append(p)

    @EXAMPLES
    @given(d=CHANNEL)
    def channel_updates(d: Any) -> None:
        c = _check("CHANNEL_UPDATE", lambda: channel_payload(d), False)
        if c is not None and c.get("guild_id") is not None:
            directory.add_channel(c["guild_id"], c)
            channels.append((c["guild_id"], c))

    @EXAMPLES
    @given(d=VOICE, leave_after=st.floats(min_value=0, max_value=10))
    def voice_updates(d: Any, leave_after: float) -> None:
        state = _check("VOICE_STATE_UPDATE", lambda: voice_state_payload(d), False)
        if state is None:
            return
        closed, _ = voice.update(state, 1_700_000_000.0, 0)
        keep("voice_sessions", closed)
        if state["guild_id"] is not None:
            left, _ = voice.update({**state, "channel_id": None}, 1_700_000_000.0 + leave_after, 0)
            keep("voice_sessions", left)

    for run in (
        messages,
        members,
        presences,
        guild_creates,
        guild_updates,
        channel_updates,
        voice_updates,
    ):
        run()

    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=2)
    buf = FlushBuffer(pool, interval=30.0, max_rows=1_000_000, capacity=1_000_000)
    try:
        for table, table_rows in rows.items():
            buf.add_many(table, table_rows)
        assert await buf.flush(60.0)
        async with pool.acquire() as conn:
            for g in guilds:
                await upsert_meta(conn, "guild", g, GuildConfig())
            for p in profiles:
                await upsert_meta(conn, "profile", p, GuildConfig())
            for item in channels:
                await upsert_meta(conn, "channel", item, GuildConfig())
            dead = await conn.fetch("SELECT table_name, row, reason FROM dead_letter_rows")
            assert [tuple(r) for r in dead] == []
            staged = {
                t: await conn.fetchval(f"SELECT count(*) FROM {t}")  # noqa: S608
                for t in rows
            }
        # Something of every family got through (the strategies also make valid payloads).
        assert all(staged.values()), staged
        assert profiles  # valid GUILD_UPDATEs were made and written
        print(
            f"rows produced={ {t: len(r) for t, r in rows.items()} } staged={staged}"
            f" guild profiles written={len(profiles)}"
        )
    finally:
        await buf.close(5.0)
        await pool.close()
