-- Herwa Postgres schema, version 2: the ETL's run log.
--
-- One row per `herwa etl run`, written at the start (outcome 'running') and completed at the end,
-- so a dashboard can show recent runs, their outcome, rows moved per table and ingestion lag
-- even when no Pushgateway is configured. A run that died leaves 'running' behind; its
-- finished_at stays NULL, which is exactly what a "stuck/crashed runs" panel wants to see.

CREATE TABLE etl_runs (
    run_id        bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text NOT NULL DEFAULT 'running'
                      CHECK (outcome IN ('running', 'caught_up', 'deadline', 'failed')),
    rows_moved    jsonb NOT NULL DEFAULT '{}',   -- staging table → rows loaded into ClickHouse
    rows_skipped  jsonb NOT NULL DEFAULT '{}',   -- claimed but not loaded (opted-out users)
    rows_cleaned  jsonb NOT NULL DEFAULT '{}',   -- staging rows deleted past retention
    lag_seconds   jsonb NOT NULL DEFAULT '{}',   -- age of the oldest un-ingested row at the end
    usage_drained integer NOT NULL DEFAULT 0,    -- command-usage rows staged from Redis
    deletions     integer NOT NULL DEFAULT 0,    -- deletion requests completed
    duration_seconds double precision,
    host          text,
    error         text
);
CREATE INDEX etl_runs_started ON etl_runs (started_at DESC);

-- (guild, UTC hour) buckets whose ClickHouse rollups must be recomputed. Written in the same
-- transaction that marks a message (or deletion) batch, emptied only after the recompute
-- succeeded, so a crash between loading and recomputing is repaired by the next run.
CREATE TABLE etl_dirty_buckets (
    guild_id bigint NOT NULL,
    hour     timestamptz NOT NULL,
    PRIMARY KEY (guild_id, hour)
);
