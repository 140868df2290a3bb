"""The event families the ETL moves, registered in one place.

Each family moves one staging table of :mod:`herwa.staging` into one ClickHouse table. The
SELECT list is rendered by Postgres straight into its text COPY format in the ClickHouse column
order, so a batch never passes through Python objects row by row (see :mod:`herwa.etl.sync`).
"""

from __future__ import annotations

from dataclasses import dataclass

from herwa.staging import (
    COMMAND_USAGE,
    GUILD_EVENTS,
    MEMBER_COUNT_SNAPSHOTS,
    MEMBER_EVENTS,
    MESSAGE_DELETIONS,
    MESSAGE_EDITS,
    MESSAGE_EVENTS,
    MESSAGE_REACTIONS,
    PRESENCE_EVENTS,
    VOICE_SESSIONS,
    StagingTable,
)

# Postgres's text COPY format is ClickHouse's TabSeparated: the same escapes, \\N for NULL, and
# plain timestamps that need no best-effort parsing, so no byte is rewritten on the way
# (the comparison with CSV: benchmarks/README.md).
WIRE_FORMAT = "TabSeparated"
# optimize_on_insert would collapse duplicate keys inside a batch at insert time; nothing relies
# on that (every read is FINAL), so it is pure cost.
INSERT_SETTINGS = {"optimize_on_insert": 0}


def _utc(column: str) -> str:
    # A timestamp without zone ("2024-01-01 00:00:02.592"): ClickHouse's basic parser reads it
    # as UTC (the columns are DateTime64(3, 'UTC')), truncating to milliseconds.
    return f"({column} AT TIME ZONE 'UTC')"


def _micros(column: str) -> str:
    # The microseconds below the millisecond _utc keeps: the rest of a receive time that keys a
    # row (ClickHouse 0011).
    return f"(date_part('microseconds', {column})::int % 1000)"


def _ms(column: str) -> str:
    # Staging capture time in ms is the row's ClickHouse version: stable across retries (so a
    # re-sent batch has identical bytes and a matching dedup token) and newer for a re-capture.
    # date_part is float8 arithmetic; extract() is numeric, far slower per row.
    return f"floor(date_part('epoch', {column}) * 1000)::bigint"


@dataclass(frozen=True)
class Family:
    staging: StagingTable  # Postgres, described in herwa.staging
    target_table: str  # ClickHouse
    columns: tuple[tuple[str, str], ...]  # (ClickHouse column, Postgres expression)
    rollup: str | None = None  # which rollup maintenance the batch triggers (see rollups.py)
    # ClickHouse column that records the loading batch (its upper staged_xid bound), for rollups
    # that find their work by batch instead of a queue (clickhouse migration 0004).
    batch_column: str | None = None

    @property
    def name(self) -> str:  # metric label and run-log key
        return self.staging.name

    @property
    def staging_table(self) -> str:
        return self.staging.name

    @property
    def user_column(self) -> str | None:
        # Loaded under the staging column's name: opted-out (guild_id, user) are never loaded.
        return self.staging.member_column

    @property
    def target_columns(self) -> list[str]:
        names = [name for name, _ in self.columns]
        return names if self.batch_column is None else [*names, self.batch_column]


FAMILIES: tuple[Family, ...] = (
    Family(
        staging=MESSAGE_EVENTS,
        target_table="messages",
        columns=(
            ("message_id", "message_id"),
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("thread_id", "coalesce(thread_id, 0)"),
            ("author_id", "author_id"),
            ("created_at", _utc("created_at")),
            ("kind", "kind"),
            ("is_bot", "is_bot::int"),
            ("source", "source"),
            ("version", _ms("captured_at")),
        ),
        rollup="messages",
        batch_column="loaded_batch",
    ),
    Family(
        staging=MESSAGE_EDITS,
        target_table="message_edits",
        columns=(
            ("message_id", "message_id"),
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("edited_at", _utc("edited_at")),
            ("version", _ms("captured_at")),
        ),
    ),
    Family(
        staging=MESSAGE_DELETIONS,
        target_table="message_deletions",
        columns=(
            ("message_id", "message_id"),
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("deleted_at", _utc("deleted_at")),
            ("version", _ms("captured_at")),
        ),
        rollup="deletions",
    ),
    Family(
        staging=VOICE_SESSIONS,
        target_table="voice_sessions",
        columns=(
            ("session_id", "session_id"),
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("user_id", "user_id"),
            ("channel_kind", "channel_kind"),
            ("joined_at", _utc("joined_at")),
            ("left_at", _utc("left_at")),
            ("duration_seconds", "duration_seconds"),
            ("muted_seconds", "muted_seconds"),
            ("close_reason", "close_reason"),
            ("is_bot", "is_bot::int"),
            ("version", _ms("captured_at")),
        ),
        batch_column="loaded_batch",
    ),
    Family(
        staging=MEMBER_EVENTS,
        target_table="member_events",
        columns=(
            ("guild_id", "guild_id"),
            ("user_id", "user_id"),
            ("event", "event"),
            ("at", _utc("at")),
            ("at_us", _micros("at")),
            ("account_created_at", _utc("account_created_at")),
            ("is_bot", "is_bot::int"),
            ("version", _ms("captured_at")),
        ),
    ),
    Family(
        staging=GUILD_EVENTS,
        target_table="guild_events",
        columns=(
            ("guild_id", "guild_id"),
            ("event", "event"),
            ("at", _utc("at")),
            ("at_us", _micros("at")),
            ("member_count", "member_count"),
            ("version", _ms("captured_at")),
        ),
    ),
    Family(
        staging=MEMBER_COUNT_SNAPSHOTS,
        target_table="member_count_snapshots",
        columns=(
            ("guild_id", "guild_id"),
            ("day", "day"),
            ("member_count", "member_count"),
            ("taken_at", _utc("taken_at")),
        ),
    ),
    Family(
        staging=COMMAND_USAGE,
        target_table="command_usage",
        columns=(
            ("drain_id", "drain_id"),
            ("guild_id", "guild_id"),
            ("command", "command"),
            ("hour", _utc("hour")),
            ("outcome", "outcome"),
            ("invocations", "invocations"),
            ("version", _ms("captured_at")),
        ),
    ),
    Family(
        staging=MESSAGE_REACTIONS,
        target_table="message_reactions",
        columns=(
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("message_id", "message_id"),
            ("user_id", "user_id"),
            ("emoji", "emoji"),
            ("emoji_name", "coalesce(emoji_name, '')"),
            ("event", "event"),
            ("at", _utc("at")),
            ("at_us", _micros("at")),
            ("version", _ms("captured_at")),
        ),
    ),
    Family(
        staging=PRESENCE_EVENTS,
        target_table="presence_events",
        columns=(
            ("guild_id", "guild_id"),
            ("user_id", "user_id"),
            # Microseconds, as staged: ClickHouse keeps them (DateTime64(6)).
            ("at", _utc("at")),
            ("status", "status"),
            ("activity_types", "activity_types"),
            ("version", _ms("captured_at")),
        ),
    ),
)

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}
