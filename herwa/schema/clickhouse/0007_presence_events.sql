-- Herwa ClickHouse schema, version 7: presence transitions (postgres migration 0022).
--
-- `at` is the bot's receive time, kept to the microsecond: two transitions of one member within
-- a millisecond are two rows in staging and must stay two here. activity_types is the bit set
-- of Discord activity types (bit n: type n).
CREATE TABLE IF NOT EXISTS presence_events (
    guild_id       UInt64,
    user_id        UInt64,
    at             DateTime64(6, 'UTC'),
    status         Enum8('online' = 1, 'idle' = 2, 'dnd' = 3, 'offline' = 4),
    activity_types UInt8,
    version        UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (guild_id, user_id, at)
SETTINGS non_replicated_deduplication_window = 1000;
