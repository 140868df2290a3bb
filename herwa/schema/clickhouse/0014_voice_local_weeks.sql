-- Herwa ClickHouse schema, version 14: per member, the LOCAL weeks they started a voice session
-- in, in their server's time zone, for retention (as 0013 for messages).
--
-- Retention converted every cohort member's session starts in their first weeks
-- (voice_starts_by_member) to local Mondays: about a fifth of its statement (issue 19). The ETL
-- keeps that answer instead (etl/local_weeks.py):
--
-- * voice_local_weeks: per (guild, zone, member), the distinct local Mondays of their sessions'
--   starts, ascending, written from the member's whole set of starts (so a rewrite is exact
--   whatever it follows) for every member of each voice batch the ETL loads.
-- * voice_sessions.loaded_batch: which batch loaded the session (as messages, 0004). The ETL
--   rewrites the members of the batches above its progress mark (Postgres etl_rollup_progress,
--   'voice'). Rows written before this version, or by an ETL of the release before (a run
--   still going when this ran, or a rollback), hold 0: the next run rewrites their members and
--   sets it to 1, below any batch's bound and at the mark Postgres 0023 starts from.
-- * message_local_weeks_zone.voice: whether the server's voice weeks are complete in its
--   recorded zone. Retention reads them only then. Every zone row written before this version
--   (or by the release before) reads false, and so do the rows this migration adds for the
--   servers with voice but no zone row; the ETL's next run writes the missing weeks and sets
--   it. A server with no row at all had no voice loaded before this version: true.
--
-- Deletion requests reach voice_local_weeks through guild_id and user_id, history expiry by its
-- date array (etl/expiry_plan.py), as message_local_weeks.
CREATE TABLE IF NOT EXISTS voice_local_weeks (
    guild_id    UInt64,
    tz          LowCardinality(String),
    user_id     UInt64,
    weeks       Array(Date),    -- local Mondays a voice session started in, ascending
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (guild_id, tz, user_id);

ALTER TABLE voice_sessions ADD COLUMN IF NOT EXISTS loaded_batch UInt64 DEFAULT 0;
ALTER TABLE voice_sessions ADD INDEX IF NOT EXISTS voice_sessions_loaded_batch loaded_batch TYPE minmax GRANULARITY 1;

ALTER TABLE message_local_weeks_zone ADD COLUMN IF NOT EXISTS voice Bool DEFAULT false;

-- Version 0, below every row the ETL writes; re-running this adds none twice.
INSERT INTO message_local_weeks_zone (guild_id, tz, others_deleted, voice, version)
SELECT DISTINCT guild_id, 'UTC', true, false, 0 FROM voice_starts_by_member
WHERE guild_id NOT IN (SELECT guild_id FROM message_local_weeks_zone);
