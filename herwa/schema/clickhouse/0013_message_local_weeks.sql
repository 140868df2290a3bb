-- Herwa ClickHouse schema, version 13: per member, the LOCAL weeks they sent a message in, in
-- their server's time zone, for retention.
--
-- Retention (analytics/retention.py) took, for every cohort member, a slice of their per-UTC-week
-- first/last times (message_activity_weeks_by_author, 0005), converted each to a local Monday
-- and de-duplicated them: most of the statement's time (issue 19). A server's time zone
-- changes rarely, so the ETL keeps the answer of that work instead:
--
-- * message_local_weeks: per (guild, zone, author), the distinct local Mondays (in that zone)
--   of the weeks with a live message, ascending. Exact: a local week is active iff the first
--   or the last time of one of the UTC weeks falls in it, as 0005's header proves, so these
--   are the local Mondays of the per-author arrays' first_at and last_at. Rewritten by the
--   rollups' recompute (rollups.py) for every author whose weeks it rewrites, from those rows,
--   with a newer version; an author left with no live message gets an empty array.
-- * message_local_weeks_zone: per guild, the zone its rows are in; no row means 'UTC'. The
--   zone lives in Postgres (guilds.timezone), which ClickHouse cannot read: each ETL run
--   rebuilds a guild whose zone there differs (etl/local_weeks.py), writing the new zone's
--   rows first and this row after them, so a reader that sees the zone finds its rows
--   complete, and deleting the other zones' rows last. Retention reads the table only when
--   the asked zone is the recorded one.
--
-- Both hold a guild's data: deletion requests reach them through guild_id (the zone table has
-- no member column, so only a server's deletion), history expiry reaches message_local_weeks
-- by its date array (etl/expiry_plan.py).
CREATE TABLE IF NOT EXISTS message_local_weeks (
    guild_id    UInt64,
    tz          LowCardinality(String),
    author_id   UInt64,
    weeks       Array(Date),    -- local Mondays with a live message, ascending
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (guild_id, tz, author_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS message_local_weeks_zone (
    guild_id        UInt64,
    tz              LowCardinality(String),
    others_deleted  Bool,   -- false while rows of another zone may remain (a rebuild under way)
    version         UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY guild_id;

-- Backfill every guild in 'UTC', what a guild without a zone row is read as, each row at the
-- version of the arrays it comes from, as every writer of local weeks does (the ETL rewrites
-- the local weeks of arrays newer than all of them: an ETL of the release before this one
-- rewrote those arrays alone, local_weeks.heal). Any later recompute or rebuild writes a newer
-- version, and re-running this after an interruption writes the same rows again. In UTC a
-- local Monday is the UTC one, so the weeks are the per-author arrays' own.
INSERT INTO message_local_weeks (guild_id, tz, author_id, weeks, version)
SELECT guild_id, 'UTC', author_id, weeks, version
FROM message_activity_weeks_by_author FINAL;
