"""The Postgres staging tables: what the roles write and the ETL moves, described once.

Each entry names the columns its writer fills, in the order of the writer's row tuples, and the
member a row is about. The bot's flush buffer (:mod:`herwa.bot.buffer`) and the ETL's families
(:mod:`herwa.etl.families`) are built from these entries; the tables themselves are created by
the versioned SQL migrations, and ``tests/core/test_staging.py`` holds the two equal — so a
staging table added in SQL but not here, or a column named here that SQL lacks, fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class StagingTable:
    name: str  # the table, and the ETL family, metric label and run-log key that move it
    columns: tuple[str, ...]  # what its writer fills, in the order of the writer's tuples
    # The member a row is about: an opted-out member's rows are never staged nor loaded, and a
    # member's deletion finds them by it.
    member_column: str | None = None
    # Written by the bot's flush buffer; False for tables with a writer of their own.
    buffered: bool = True
    # Ingestion lag is now() minus the oldest pending row's value of this column.
    lag_column: str = "captured_at"


MESSAGE_EVENTS = StagingTable(
    "message_events",
    (
        "message_id",
        "guild_id",
        "channel_id",
        "thread_id",
        "author_id",
        "created_at",
        "kind",
        "is_bot",
        "source",
    ),
    member_column="author_id",
)
MESSAGE_EDITS = StagingTable("message_edits", ("message_id", "edited_at", "guild_id", "channel_id"))
MESSAGE_DELETIONS = StagingTable(
    "message_deletions", ("message_id", "guild_id", "channel_id", "deleted_at")
)
VOICE_SESSIONS = StagingTable(
    "voice_sessions",
    (
        "session_id",
        "guild_id",
        "channel_id",
        "user_id",
        "channel_kind",
        "joined_at",
        "left_at",
        "muted_seconds",
        "close_reason",
        "is_bot",
    ),
    member_column="user_id",
)
MEMBER_EVENTS = StagingTable(
    "member_events",
    ("guild_id", "user_id", "event", "at", "account_created_at", "is_bot"),
    member_column="user_id",
)
GUILD_EVENTS = StagingTable("guild_events", ("guild_id", "event", "at", "member_count"))
# Reactions added and taken back, stamped by receive time (postgres migration 0021).
MESSAGE_REACTIONS = StagingTable(
    "message_reactions",
    ("guild_id", "channel_id", "message_id", "user_id", "emoji", "emoji_name", "event", "at"),
    member_column="user_id",
)
# Presence transitions of the servers whose tier grants presence (herwa.bot.presence).
PRESENCE_EVENTS = StagingTable(
    "presence_events",
    ("guild_id", "user_id", "at", "status", "activity_types"),
    member_column="user_id",
)
# Upserted once per guild and day by the bot's daily snapshot (herwa.bot.snapshots).
MEMBER_COUNT_SNAPSHOTS = StagingTable(
    "member_count_snapshots",
    ("guild_id", "day", "member_count", "taken_at"),
    buffered=False,
    lag_column="taken_at",
)
# Drained from the command gate's counters (herwa.usage).
COMMAND_USAGE = StagingTable(
    "command_usage",
    ("drain_id", "guild_id", "command", "hour", "outcome", "invocations"),
    buffered=False,
)

STAGING_TABLES: tuple[StagingTable, ...] = (
    MESSAGE_EVENTS,
    MESSAGE_EDITS,
    MESSAGE_DELETIONS,
    VOICE_SESSIONS,
    MEMBER_EVENTS,
    GUILD_EVENTS,
    MEMBER_COUNT_SNAPSHOTS,
    COMMAND_USAGE,
    MESSAGE_REACTIONS,
    PRESENCE_EVENTS,
)
BUFFERED: tuple[StagingTable, ...] = tuple(t for t in STAGING_TABLES if t.buffered)


async def ingestion_lag(pg: asyncpg.Connection, table: StagingTable) -> float:
    """Seconds since the oldest row of ``table`` the ETL has not loaded yet; 0 when none is."""
    # Pending rows are exactly those at or above the low-water mark: the staged_xid index finds
    # them. Mark and rows are read in one statement (one snapshot), so a batch committing in
    # between (the operator reads this while a run goes on) is never counted as pending.
    lag = await pg.fetchval(
        f"SELECT coalesce(extract(epoch FROM now() - min({table.lag_column})), 0)::float8 "  # noqa: S608
        f"FROM {table.name} WHERE staged_xid >= coalesce((SELECT"
        " max(staged_xid::text::bigint) FROM etl_low_water WHERE family = $1), 1)::text::xid8",
        table.name,
    )
    return max(0.0, float(lag))
