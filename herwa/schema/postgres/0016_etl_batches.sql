-- Herwa Postgres schema, version 16: each loaded batch is recorded once; staged rows are no
-- longer marked one by one.
--
-- Until now the ETL claimed a batch with `UPDATE … SET ch_ingested_at = now() … RETURNING`: a
-- second write of every staged row (a new row version, WAL, a vacuum to follow), more than half
-- of the ETL's Postgres time. The low-water mark of staged_xid (migration 0006) already says
-- which rows are loaded: every row below a family's newest mark was loaded by the batch whose
-- mark is the first one above the row's staged_xid. So the claim becomes a plain COPY (SELECT),
-- and the batch leaves one row in etl_low_water — the mark it already left, now with its range,
-- row count and ClickHouse dedup token (recorded_at is the moment it was loaded: the row commits
-- in the batch's own transaction, after the ClickHouse insert).
--
-- "When was this row loaded?": etl_batch_of(family, staged_xid) is the batch that loaded a
-- staged row, NULL while the row is pending; e.g.
--   SELECT m.message_id, b.recorded_at FROM message_events m,
--          LATERAL etl_batch_of('message_events', m.staged_xid) b WHERE m.message_id = 42;
-- Rows loaded before migration 0006 (staged_xid 0) and before a `herwa etl reset-low-water`
-- map to the mark '1'; it is dated now (it was -infinity), which is when those rows were loaded
-- at the latest. ch_ingested_at is kept for what releases before this one wrote (and the bot's
-- snapshot upsert still sets it NULL); nothing reads it.
--
-- Cleanup deletes whole staged_xid ranges: every row below the mark that was current at the
-- retention cutoff (etl/cleanup.py), by the marks' dates alone — hence the date above, so
-- those rows stay a retention like any other.
--
-- Every table here is locked for its trigger's creation, briefly; see 0006 for the timeout.
SET LOCAL lock_timeout = '10s';

ALTER TABLE etl_low_water
    -- The batch's inclusive lower bound (staged_xid is its exclusive upper bound); NULL for
    -- marks recorded before this version or by a reset.
    ADD COLUMN from_xid xid8,
    ADD COLUMN row_count integer,
    -- The insert_deduplication_token the batch was inserted with (NULL: an empty batch).
    ADD COLUMN dedup_token text;
UPDATE etl_low_water SET recorded_at = now() WHERE recorded_at = '-infinity';

CREATE FUNCTION etl_batch_of(family text, staged_xid xid8) RETURNS etl_low_water
LANGUAGE sql STABLE AS $$
    SELECT b.* FROM etl_low_water b
    WHERE b.family = etl_batch_of.family AND b.staged_xid > etl_batch_of.staged_xid
    ORDER BY b.staged_xid LIMIT 1
$$;

-- A row made pending again must take a new staged_xid, and now that nothing marks rows, an
-- update is the only sign of it: any update of a staged row re-stages it, unless it sets
-- staged_xid itself (`herwa etl reset-low-water`) or sets ch_ingested_at to a time (the mark of
-- an ETL of the previous release, during a rolling upgrade). The bot's snapshot upsert is the
-- one writer that does this by design; a hand-written fix of a staged row is loaded again too.
-- The ETL no longer updates staged rows, so these triggers cost it nothing; the bot only
-- inserts (ON CONFLICT DO NOTHING) everywhere else.
DROP TRIGGER member_count_snapshots_restage ON member_count_snapshots;
CREATE TRIGGER message_events_restage BEFORE UPDATE ON message_events FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER message_edits_restage BEFORE UPDATE ON message_edits FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER message_deletions_restage BEFORE UPDATE ON message_deletions FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER voice_sessions_restage BEFORE UPDATE ON voice_sessions FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER member_events_restage BEFORE UPDATE ON member_events FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER guild_events_restage BEFORE UPDATE ON guild_events FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER member_count_snapshots_restage BEFORE UPDATE ON member_count_snapshots
    FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
CREATE TRIGGER command_usage_restage BEFORE UPDATE ON command_usage FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();

-- Pages were kept half empty (0006) so the mark's new row version fit beside the old one; with
-- no mark, full pages halve what the claims read and what cleanup deletes. Applies to pages
-- written from now on. member_count_snapshots keeps its room: the snapshot upsert updates.
ALTER TABLE message_events RESET (fillfactor);
ALTER TABLE message_edits RESET (fillfactor);
ALTER TABLE message_deletions RESET (fillfactor);
ALTER TABLE voice_sessions RESET (fillfactor);
ALTER TABLE member_events RESET (fillfactor);
ALTER TABLE guild_events RESET (fillfactor);
ALTER TABLE command_usage RESET (fillfactor);
