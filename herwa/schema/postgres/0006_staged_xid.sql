-- Herwa Postgres schema, version 6: a claim that lets the mark be a HOT update.
--
-- The ETL marks every row it loads (UPDATE … SET ch_ingested_at = now()). Until now that update
-- could never be HOT (heap-only tuple: the new row version stays on its page and no index is
-- touched), because the `*_pending` partial indexes name ch_ingested_at in their predicates, so
-- every mark wrote into every btree of the table. Measured on 1 M staged message events, the
-- claim-and-mark statement alone took ~12.6 s of the ETL's ~18.5 s.
--
-- Now no index mentions ch_ingested_at, and the claim finds pending rows by `staged_xid`, the
-- id of the transaction that staged the row (immutable, so the mark can be HOT):
--   * staged_xid defaults to pg_current_xact_id(), btree-indexed. The ETL claims rows in
--     staged_xid order above a per-family low-water mark (etl_low_water): every un-ingested row
--     has staged_xid >= the newest mark. A claim never reaches past the xmin of a snapshot taken
--     just before it (every transaction below that xmin has committed or aborted), so rows of a
--     transaction that commits late are claimed by a later batch instead of being skipped — the
--     hole of watermarks on serial ids (../shared/notes/field-lessons.md).
--   * The claim still filters on ch_ingested_at IS NULL, and still marks every row it loads.
--   * fillfactor 45: a marked row's new version must fit on its page for the update to be HOT,
--     and it is a few bytes longer than the old one (ch_ingested_at is no longer NULL): at 50,
--     ~5 % of the marks did not fit.
--   * The BRIN on ch_ingested_at (0005) goes too: even as a summarizing index, which PostgreSQL
--     16+ allows under HOT, it was updated on every mark (~25 % of the mark's time). Cleanup
--     finds old ingested rows through the low-water history instead: rows below the mark that
--     was current at the cutoff were all ingested before the cutoff.
-- A row that becomes pending again takes a new staged_xid (see herwa_restage below).
--
-- Rows staged before this migration: ingested ones get staged_xid 0 (below every mark; no real
-- transaction has id 0), pending ones the id of the transaction that wrote them (their xmin,
-- widened to xid8 with the current epoch), found through the old pending index before it goes.
-- Each family starts with the mark 1, dated -infinity: rows below it are exactly those ingested
-- before this migration, which cleanup may take as soon as their ch_ingested_at is old enough
-- (it always checks ch_ingested_at too), instead of waiting a whole retention for a mark.
--
-- Every table here is locked from its ALTER to the end of this transaction; the bot's flushes
-- wait meanwhile (seconds: 3.9 s for 5.2 M staged rows, measured). Rather than queueing them
-- behind an ALTER that waits itself (for a long ETL batch), give up and let the hook Job retry.
SET LOCAL lock_timeout = '10s';

-- A row made pending again must take a new staged_xid: under its old one it would lie below the
-- low-water mark and never be loaded. The one writer that does this by design is the bot's
-- member-count upsert (a later snapshot the same day), so member_count_snapshots gets a trigger
-- that does it whoever writes (also a bot pod of the previous release during a rolling
-- upgrade). The other staging tables get none: a row trigger, even one whose WHEN is false,
-- costs the ETL's mark ~15 %. To re-load rows of those by hand, set staged_xid =
-- pg_current_xact_id() in the same UPDATE that sets ch_ingested_at to NULL (otherwise the ETL's
-- cleanup finds them below its bound one retention later and re-stages them then).
CREATE FUNCTION herwa_restage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.staged_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;

CREATE TABLE etl_low_water (
    family      text NOT NULL,
    staged_xid  xid8 NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (family, staged_xid)
);
INSERT INTO etl_low_water (family, staged_xid, recorded_at)
SELECT family, '1', '-infinity' FROM unnest(ARRAY['message_events', 'message_edits',
    'message_deletions', 'voice_sessions', 'member_events', 'guild_events',
    'member_count_snapshots', 'command_usage']) AS family;

ALTER TABLE message_events ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE message_events SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE message_events ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX message_events_pending;
DROP INDEX message_events_ingested_brin;
CREATE INDEX message_events_staged ON message_events (staged_xid);
ALTER TABLE message_events SET (fillfactor = 45);

ALTER TABLE message_edits ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE message_edits SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE message_edits ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX message_edits_pending;
DROP INDEX message_edits_ingested_brin;
CREATE INDEX message_edits_staged ON message_edits (staged_xid);
ALTER TABLE message_edits SET (fillfactor = 45);

ALTER TABLE message_deletions ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE message_deletions SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE message_deletions ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX message_deletions_pending;
DROP INDEX message_deletions_ingested_brin;
CREATE INDEX message_deletions_staged ON message_deletions (staged_xid);
ALTER TABLE message_deletions SET (fillfactor = 45);

ALTER TABLE voice_sessions ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE voice_sessions SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE voice_sessions ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX voice_sessions_pending;
DROP INDEX voice_sessions_ingested_brin;
CREATE INDEX voice_sessions_staged ON voice_sessions (staged_xid);
ALTER TABLE voice_sessions SET (fillfactor = 45);

ALTER TABLE member_events ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE member_events SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE member_events ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX member_events_pending;
DROP INDEX member_events_ingested_brin;
CREATE INDEX member_events_staged ON member_events (staged_xid);
ALTER TABLE member_events SET (fillfactor = 45);

ALTER TABLE guild_events ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE guild_events SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE guild_events ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX guild_events_pending;
DROP INDEX guild_events_ingested_brin;
CREATE INDEX guild_events_staged ON guild_events (staged_xid);
ALTER TABLE guild_events SET (fillfactor = 45);

ALTER TABLE member_count_snapshots ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE member_count_snapshots SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE member_count_snapshots ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX member_count_snapshots_pending;
DROP INDEX member_count_snapshots_ingested_brin;
CREATE INDEX member_count_snapshots_staged ON member_count_snapshots (staged_xid);
ALTER TABLE member_count_snapshots SET (fillfactor = 45);
CREATE TRIGGER member_count_snapshots_restage
    BEFORE UPDATE OF ch_ingested_at ON member_count_snapshots FOR EACH ROW
    WHEN (OLD.ch_ingested_at IS NOT NULL AND NEW.ch_ingested_at IS NULL)
    EXECUTE FUNCTION herwa_restage();

ALTER TABLE command_usage ADD COLUMN staged_xid xid8 NOT NULL DEFAULT '0';
UPDATE command_usage SET staged_xid = (((pg_current_xact_id()::text::bigint >> 32)
    - CASE WHEN xmin::text::bigint > pg_current_xact_id()::text::bigint & 4294967295 THEN 1 ELSE 0 END)
    << 32 | xmin::text::bigint)::text::xid8
WHERE ch_ingested_at IS NULL;
ALTER TABLE command_usage ALTER COLUMN staged_xid SET DEFAULT pg_current_xact_id();
DROP INDEX command_usage_pending;
DROP INDEX command_usage_ingested_brin;
CREATE INDEX command_usage_staged ON command_usage (staged_xid);
ALTER TABLE command_usage SET (fillfactor = 45);
