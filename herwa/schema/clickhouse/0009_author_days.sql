-- Herwa ClickHouse schema, version 9: per (guild, UTC day, bot flag, author) message activity.
--
-- /overview counts the members who sent a message in a range, bots left out unless asked. The
-- hourly rollup (0002) answers it but holds a row per author, channel and hour, about as many
-- as there are messages; the daily rollup (0003) has one row per author and day but no bot
-- flag. This table is the daily rollup with each message's bot flag in its key, so the count
-- reads one row per author and day. Its first_at/last_at make a range that starts or ends
-- inside a UTC day exact: an author has a message in [since, next midnight) of a day when their
-- last_at that day is at or after since, and in [midnight, until) when their first_at is before
-- until (a range inside a single UTC day is answered from the hourly rollup instead).
--
-- Maintained by the ETL's recompute (rollups.py) like the daily rollup, which is now derived
-- from this table: every recomputed UTC day is rebuilt from `messages FINAL` minus deletions
-- and written again with a newer version, zero rows for keys without a live message any more.
-- Read with FINAL and `messages > 0`.
CREATE TABLE IF NOT EXISTS message_activity_author_days (
    guild_id    UInt64,
    day         Date,
    is_bot      Bool,
    author_id   UInt64,
    messages    UInt32,
    first_at    DateTime('UTC'),
    last_at     DateTime('UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (guild_id, day, is_bot, author_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Backfill from what is already loaded, at version 0 (see 0003): any ETL recompute writes a
-- newer version, and re-running this after an interruption writes the same rows again.
INSERT INTO message_activity_author_days
    (guild_id, day, is_bot, author_id, messages, first_at, last_at, version)
SELECT guild_id, toDate(created_at) AS day, is_bot, author_id, toUInt32(count()),
       toDateTime(min(created_at), 'UTC'), toDateTime(max(created_at), 'UTC'), 0
FROM messages FINAL
WHERE (guild_id, message_id) NOT IN (SELECT guild_id, message_id FROM message_deletions)
GROUP BY guild_id, day, is_bot, author_id;
