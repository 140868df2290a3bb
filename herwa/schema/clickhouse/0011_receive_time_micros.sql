-- Herwa ClickHouse schema, version 11: receive times kept to the microsecond in the keys.
--
-- Member events, guild events and reactions are keyed by the bot's receive time, which Postgres
-- stages to the microsecond (timestamptz) and these tables held to the millisecond
-- (DateTime64(3)). Two rows of one key received within the same millisecond were two staged rows
-- and one row here, and FINAL kept one: a member's reaction added, removed and added again,
-- delivered in one burst after a RESUME, lost an add. The key's time column cannot change type,
-- so each table gets `at_us`, the microseconds of `at` below its millisecond (0-999), at the end
-- of its sorting key; `at` stays what every query reads. Rows loaded before this migration have
-- 0 there. One case can count a row twice: a batch inserted by an ETL run that died before
-- recording it, and loaded again only after the upgrade (then with its microseconds); the next
-- ETL run reloads such a batch within minutes, so upgrade between runs. Re-running this is
-- harmless: the column exists and the key is unchanged.
ALTER TABLE member_events ADD COLUMN IF NOT EXISTS at_us UInt16 AFTER at,
    MODIFY ORDER BY (guild_id, user_id, event, at, at_us);

ALTER TABLE guild_events ADD COLUMN IF NOT EXISTS at_us UInt16 AFTER at,
    MODIFY ORDER BY (guild_id, event, at, at_us);

ALTER TABLE message_reactions ADD COLUMN IF NOT EXISTS at_us UInt16 AFTER at,
    MODIFY ORDER BY (guild_id, message_id, user_id, emoji, event, at, at_us);
