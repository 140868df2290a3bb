-- Herwa ClickHouse schema, version 1: the analytics tables the ETL loads.
--
-- Every table is a ReplacingMergeTree keyed by the event's natural id, so a batch loaded twice
-- (a crash between the insert and the Postgres mark) replaces rather than adds. Merges happen
-- eventually, so queries must read with FINAL (or argMax on `version`), never count on a merge.
-- Partitions use the event's own time, which never changes between versions of a row: FINAL
-- collapses across partitions but OPTIMIZE … FINAL only within one.
-- Statements are separated by a semicolon at the end of a line and must be idempotent:
-- ClickHouse has no transactional DDL, so a migration interrupted half way is simply re-run.

CREATE TABLE IF NOT EXISTS messages (
    message_id  UInt64,
    guild_id    UInt64,
    channel_id  UInt64,
    thread_id   UInt64 DEFAULT 0,        -- 0: not in a thread
    author_id   UInt64,
    created_at  DateTime64(3, 'UTC'),
    kind        LowCardinality(String),
    is_bot      Bool,
    source      LowCardinality(String) DEFAULT 'gateway',
    version     UInt64                   -- load time in ms; the newest version wins
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (guild_id, message_id);

CREATE TABLE IF NOT EXISTS message_edits (
    message_id  UInt64,
    guild_id    UInt64,
    channel_id  UInt64,
    edited_at   DateTime64(3, 'UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(edited_at)
ORDER BY (guild_id, message_id, edited_at);

CREATE TABLE IF NOT EXISTS message_deletions (
    message_id  UInt64,
    guild_id    UInt64,
    channel_id  UInt64,
    deleted_at  DateTime64(3, 'UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(deleted_at)
ORDER BY (guild_id, message_id);

CREATE TABLE IF NOT EXISTS voice_sessions (
    session_id       UUID,
    guild_id         UInt64,
    channel_id       UInt64,
    user_id          UInt64,
    channel_kind     LowCardinality(String),
    joined_at        DateTime64(3, 'UTC'),
    left_at          DateTime64(3, 'UTC'),
    duration_seconds Float64,
    muted_seconds    Float64,
    close_reason     LowCardinality(String),
    is_bot           Bool,
    version          UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(joined_at)
ORDER BY (guild_id, session_id);

CREATE TABLE IF NOT EXISTS member_events (
    guild_id           UInt64,
    user_id            UInt64,
    event              Enum8('join' = 1, 'leave' = 2),
    at                 DateTime64(3, 'UTC'),
    account_created_at DateTime64(3, 'UTC'),
    is_bot             Bool,
    version            UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (guild_id, user_id, event, at);

CREATE TABLE IF NOT EXISTS guild_events (
    guild_id     UInt64,
    event        Enum8('join' = 1, 'leave' = 2),
    at           DateTime64(3, 'UTC'),
    member_count Nullable(UInt32),
    version      UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (guild_id, event, at);

CREATE TABLE IF NOT EXISTS member_count_snapshots (
    guild_id     UInt64,
    day          Date,
    member_count UInt32,
    taken_at     DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(taken_at)
PARTITION BY toYear(day)
ORDER BY (guild_id, day);

CREATE TABLE IF NOT EXISTS command_usage (
    drain_id    String,
    guild_id    UInt64,
    command     LowCardinality(String),
    hour        DateTime('UTC'),
    outcome     LowCardinality(String),
    invocations UInt32,
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (guild_id, command, hour, outcome, drain_id);
