-- Herwa ClickHouse schema, version 2: insert deduplication for the ETL and the hourly rollups.
--
-- The ETL inserts every batch with an insert_deduplication_token derived from the batch's bytes.
-- On a non-replicated MergeTree that token is ignored unless non_replicated_deduplication_window
-- is set (verified on 26.9: without it a re-sent block is stored twice), so it is set here.
-- Dedup is only the fast path: correctness never depends on it (queries read FINAL).
ALTER TABLE messages MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE message_edits MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE message_deletions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE voice_sessions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE member_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE guild_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE member_count_snapshots MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE command_usage MODIFY SETTING non_replicated_deduplication_window = 1000;

-- Message ids are snowflakes, so within a guild created_at follows the sort key closely: a
-- minmax index lets the rollup recompute and time-bounded raw queries skip most granules.
ALTER TABLE messages ADD INDEX IF NOT EXISTS created_at_minmax created_at TYPE minmax GRANULARITY 1;
ALTER TABLE messages MATERIALIZE INDEX created_at_minmax;

-- ETL-maintained rollups (not materialized views): after each message or deletion batch the ETL
-- recomputes every affected (guild, hour) bucket from `messages FINAL` minus deletions and
-- writes the whole bucket again with a newer version, including zero rows for keys that
-- vanished. A batch loaded twice therefore recomputes the same numbers instead of adding them,
-- which an insert-triggered materialized view cannot promise. Read these with FINAL.

-- Per author and channel per UTC hour: leaderboards, channel stats, retention, member summary.
CREATE TABLE IF NOT EXISTS message_activity_hourly (
    guild_id    UInt64,
    hour        DateTime('UTC'),
    channel_id  UInt64,
    author_id   UInt64,
    is_bot      Bool,
    messages    UInt32,
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (guild_id, hour, channel_id, author_id);

-- Per guild per quarter hour: the heatmap. Fifteen minutes because every real time zone offset
-- is a multiple of it (Asia/Kolkata +05:30, Asia/Kathmandu +05:45), so a local-time heatmap
-- from this table is exact in every zone, not only whole-hour ones.
CREATE TABLE IF NOT EXISTS message_activity_15m (
    guild_id    UInt64,
    bucket      DateTime('UTC'),
    is_bot      Bool,
    messages    UInt32,
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(bucket)
ORDER BY (guild_id, bucket, is_bot);
