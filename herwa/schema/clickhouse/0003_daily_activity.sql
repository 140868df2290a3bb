-- Herwa ClickHouse schema, version 3: per (guild, author, UTC day) message activity.
--
-- Maintained by the ETL's exactly-once recompute like the hourly rollups (rollups.py): every
-- queued (guild, hour) bucket makes its whole UTC day be recomputed from `messages FINAL`
-- minus deletions and written again with a newer version, zero rows for authors who no longer
-- have a live message that day. Read with FINAL and `messages > 0`.
--
-- first_at/last_at (the day's first and last live message of the author) make local-time
-- bucketing exact in every time zone, including +05:30/+05:45 ones: a UTC day spans 24 h and
-- local weeks are at least 167 h apart, so the local weeks the author was active in that day are
-- exactly {week(first_at), week(last_at)}. (Seconds suffice: every local boundary is a whole
-- second, so truncating milliseconds never moves a message across one.)
CREATE TABLE IF NOT EXISTS message_activity_daily (
    guild_id    UInt64,
    day         Date,
    author_id   UInt64,
    messages    UInt32,
    first_at    DateTime('UTC'),
    last_at     DateTime('UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (guild_id, day, author_id);

-- Backfill from what is already loaded, at version 0: any ETL recompute writes a newer version,
-- so a day that changes later is rewritten by the ETL; re-running this statement after an
-- interruption writes the same rows again, which FINAL collapses.
INSERT INTO message_activity_daily
    (guild_id, day, author_id, messages, first_at, last_at, version)
SELECT guild_id, toDate(created_at) AS day, author_id, toUInt32(count()),
       toDateTime(min(created_at), 'UTC'), toDateTime(max(created_at), 'UTC'), 0
FROM messages FINAL
WHERE (guild_id, message_id) NOT IN (SELECT guild_id, message_id FROM message_deletions)
GROUP BY guild_id, day, author_id;
