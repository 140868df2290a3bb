-- Herwa ClickHouse schema, version 4: which ETL batch loaded each message.
--
-- loaded_batch is the batch's upper staged_xid bound (postgres migration 0006). The rollup
-- recompute finds the (guild, hour) buckets it has to redo from here — every message loaded by
-- a batch above its progress mark and at or below the committed low-water mark — instead of a
-- per-batch queue in Postgres, whose bookkeeping was ~20 % of the claim statement. A batch
-- loaded twice (a crash before its commit) may leave two copies with different loaded_batch;
-- both are seen by the range scan (it reads without FINAL), and FINAL keeps either, as their
-- other columns are the same. Rows loaded before this version keep 0: their buckets were
-- queued in Postgres when they were loaded.
-- The column is constant over a batch and grows with time, so it compresses to almost nothing
-- and the minmax index lets the range scan skip every granule loaded before the mark.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS loaded_batch UInt64 DEFAULT 0;
ALTER TABLE messages ADD INDEX IF NOT EXISTS messages_loaded_batch loaded_batch TYPE minmax GRANULARITY 1;
