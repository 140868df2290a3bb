-- Herwa ClickHouse schema, version 5: per member, the UTC weeks they were active, for retention.
--
-- Retention asks, per member, in which local weeks after joining they were active. The daily
-- rollup (0003) answers it exactly but holds a row per member and active day, and a query over
-- it reads them all. Two tables, both maintained by the ETL beside the daily rollup
-- (rollups.py), answer it from one row per member:
--
-- * message_activity_weekly: per (guild, author, UTC week Monday to Monday). Every recomputed
--   UTC day makes its week be recomputed from `message_activity_daily FINAL` (zero rows
--   included, so an author without a live message that week any more becomes a zero row) and
--   written again with a newer version. Read with FINAL and `messages > 0`.
-- * message_activity_weeks_by_author: per (guild, author), that author's active weeks as
--   parallel arrays, ascending, rewritten from the weekly table for every author the weekly
--   recompute touched. Retention joins these rows to the cohort and keeps only the weeks after
--   each member's join, so it handles one row per member instead of one per member and week.
--
-- Why first_at/last_at make local weeks exact in every time zone: a local week is at least
-- 166 h long (167 h at a daylight saving switch, 166 h at Antarctica/Troll's two-hour one), so
-- a UTC week [Monday 00:00, next Monday 00:00) touches three local weeks only if a local week
-- starts strictly inside its first two hours, at an offset strictly between -02:00 and 00:00,
-- which no zone uses. So it touches at most two, and the local weeks the author was active in
-- that UTC week are exactly {week(first_at), week(last_at)}. The week's first/last times are
-- the min and max of its days' (0003), so deriving this table from the daily one is exact.
CREATE TABLE IF NOT EXISTS message_activity_weekly (
    guild_id    UInt64,
    week        Date,                    -- the UTC Monday
    author_id   UInt64,
    messages    UInt32,
    first_at    DateTime('UTC'),
    last_at     DateTime('UTC'),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYear(week)
ORDER BY (guild_id, author_id, week)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS message_activity_weeks_by_author (
    guild_id    UInt64,
    author_id   UInt64,
    weeks       Array(Date),                -- UTC Mondays with a live message, ascending
    first_at    Array(DateTime('UTC')),     -- per week, as in message_activity_weekly
    last_at     Array(DateTime('UTC')),
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (guild_id, author_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Backfill from the daily rollup, at version 0 (see 0003): any ETL recompute writes a newer
-- version, and re-running these after an interruption writes the same rows again.
INSERT INTO message_activity_weekly
    (guild_id, week, author_id, messages, first_at, last_at, version)
SELECT guild_id, toMonday(day) AS week, author_id, toUInt32(sum(messages)), min(first_at),
       max(last_at), 0
FROM message_activity_daily FINAL
WHERE messages > 0
GROUP BY guild_id, week, author_id;

INSERT INTO message_activity_weeks_by_author
    (guild_id, author_id, weeks, first_at, last_at, version)
SELECT guild_id, author_id, arrayMap(w -> w.1, s), arrayMap(w -> w.2, s), arrayMap(w -> w.3, s), 0
FROM (
    SELECT guild_id, author_id, arraySort(groupArray((week, first_at, last_at))) AS s
    FROM message_activity_weekly FINAL
    WHERE messages > 0
    GROUP BY guild_id, author_id
);
