-- Herwa Postgres schema, version 7: how far the message rollups have been recomputed, and which
-- transaction opted a member out.
--
-- Every message in ClickHouse records the batch that loaded it (clickhouse migration 0004,
-- loaded_batch = the batch's upper staged_xid bound). The recompute redoes the buckets of the
-- messages with loaded_batch above this mark and at or below the committed low-water mark of
-- message_events, then moves this mark up to it in one small transaction of its own. A crash
-- before that only means the same buckets are recomputed again; a batch still in flight has a
-- bound above the low-water mark and is left for the next round.
-- etl_dirty_buckets stays for what has no loaded_batch: message deletions and the batches
-- loaded before this version.
CREATE TABLE etl_rollup_progress (
    rollup       text PRIMARY KEY,
    loaded_batch xid8 NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO etl_rollup_progress (rollup, loaded_batch) VALUES ('messages', '0');

-- Ranges of loaded_batch whose recompute was still owed when `herwa etl reset-low-water`
-- re-based the marks on another cluster's transaction ids (after a restore): the mark above
-- starts again at 0, and these old-cluster ranges are recomputed once, then deleted.
CREATE TABLE etl_rollup_owed (
    rollup text NOT NULL,
    above  xid8 NOT NULL,
    upto   xid8 NOT NULL,
    PRIMARY KEY (rollup, above)
);

-- The ETL purges opted-out members' pending rows when a run starts; each claim of the run then
-- re-checks only what that purge could not see: rows staged since, and opt-outs committed since
-- (found by this id, against the xmin of a snapshot taken before the purge). Existing opt-outs
-- get this migration's id, below any later run's snapshot.
ALTER TABLE opt_outs ADD COLUMN opted_out_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX opt_outs_opted_out_xid ON opt_outs (opted_out_xid);
