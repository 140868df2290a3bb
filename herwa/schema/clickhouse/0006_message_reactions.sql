-- Herwa ClickHouse schema, version 6: reactions added to and removed from messages (postgres
-- migration 0021). Keyed like the staging row, so a batch loaded twice replaces itself; `at` is
-- the bot's receive time and never changes between versions of a row, so it partitions.
CREATE TABLE IF NOT EXISTS message_reactions (
    guild_id    UInt64,
    channel_id  UInt64,
    message_id  UInt64,
    user_id     UInt64,
    emoji       String,                  -- a custom emoji's id, else the unicode emoji
    emoji_name  String DEFAULT '',       -- a custom emoji's name ('' for unicode)
    event       Enum8('add' = 1, 'remove' = 2),
    at          DateTime64(3, 'UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (guild_id, message_id, user_id, emoji, event, at);
