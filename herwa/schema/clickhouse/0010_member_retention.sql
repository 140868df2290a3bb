-- Herwa ClickHouse schema, version 10: member joins and voice session starts, for retention.
--
-- Retention reads, per member, their first join and the local weeks their voice sessions
-- started in. From member_events (12 monthly parts, leaves beside joins) and voice_sessions (a
-- row per session, in session-id order) that was most of the statement's time. Two tables kept
-- by ClickHouse itself (materialized views on the loaded rows, so the ETL does no extra work)
-- answer it with fewer parts and rows:
--
-- * member_joins: the joins alone, a row per join, partitioned by year. A row per join rather
--   than a running min per member: a member's first join is the min over their rows the query
--   takes, so a rejoin, a bot flag and history expiry (which deletes the joins before a
--   server's cutoff, here as in member_events) give the same answer as the raw rows.
-- * voice_starts_by_member: per (guild, member), the set of their sessions' start times. A set
--   union is idempotent: a session re-inserted with a newer version when it closes, or a batch
--   the ETL inserts twice (a crash before its record, whether or not the dedup token reaches
--   the view), changes nothing, as joined_at never changes between versions. Read with FINAL,
--   one row per member, so the query converts only the times in that member's own window.
--   History expiry filters the sets (etl/expiry_plan.py finds the column by its type).
--
-- Lightweight DELETE on the sources does not reach the views' tables: deletion requests and
-- history expiry find these tables in the catalogue (guild_id and a user column) and delete
-- from them directly. The views themselves hold nothing and are not in those plans.
CREATE TABLE IF NOT EXISTS member_joins (
    guild_id    UInt64,
    user_id     UInt64,
    is_bot      Bool,
    at          DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYear(at)
ORDER BY (guild_id, user_id, is_bot, at);

CREATE TABLE IF NOT EXISTS voice_starts_by_member (
    guild_id    UInt64,
    user_id     UInt64,
    joined_at   SimpleAggregateFunction(groupUniqArrayArray, Array(DateTime64(3, 'UTC')))
) ENGINE = AggregatingMergeTree
ORDER BY (guild_id, user_id);

-- The views before the backfill: a row loaded while this migration runs reaches the tables by
-- the view, the backfill, or both, which either table absorbs.
CREATE MATERIALIZED VIEW IF NOT EXISTS member_joins_mv TO member_joins AS
SELECT guild_id, user_id, is_bot, at FROM member_events WHERE event = 'join';

CREATE MATERIALIZED VIEW IF NOT EXISTS voice_starts_by_member_mv TO voice_starts_by_member AS
SELECT guild_id, user_id, groupUniqArray(joined_at) AS joined_at
FROM voice_sessions GROUP BY guild_id, user_id;

-- Backfill from what is already loaded. Re-running these after an interruption inserts rows
-- already there, which a min or a set union reads the same (and merges fold away).
INSERT INTO member_joins (guild_id, user_id, is_bot, at)
SELECT guild_id, user_id, is_bot, at FROM member_events WHERE event = 'join';

INSERT INTO voice_starts_by_member (guild_id, user_id, joined_at)
SELECT guild_id, user_id, groupUniqArray(joined_at) FROM voice_sessions GROUP BY guild_id, user_id;
