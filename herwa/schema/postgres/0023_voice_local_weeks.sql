-- How far the voice local weeks (clickhouse migration 0014) have been rewritten: the members of
-- the voice sessions with loaded_batch above this mark and at or below the committed low-water
-- mark of voice_sessions, as etl_rollup_progress's 'messages' row for the message rollups. It
-- starts at 1: sessions marked 1 are those whose members the ETL rewrote apart from any batch.
INSERT INTO etl_rollup_progress (rollup, loaded_batch) VALUES ('voice', '1');
