-- Herwa Postgres schema, version 7: how far the message rollups have been recomputed.
--
-- Every message in ClickHouse records the batch that loaded it (clickhouse migration 0004,
-- loaded_batch = the batch's upper staged_xid bound). The recompute redoes the buckets of the
-- messages with loaded_batch above this mark and at or below the committed low-water mark of
-- message_events, then moves this mark up to it in one small transaction of its own. A crash
-- before that only means the same buckets are recomputed again; a batch still in flight has a
-- bound above the low-water mark and is left for the next round.
-- etl_dirty_buckets stays for what has no loaded_batch: message deletions, deletion requests,
-- and the batches loaded before this version.
CREATE TABLE etl_rollup_progress (
    rollup       text PRIMARY KEY,
    loaded_batch xid8 NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO etl_rollup_progress (rollup, loaded_batch) VALUES ('messages', '0');
