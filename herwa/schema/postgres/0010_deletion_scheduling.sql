-- Herwa Postgres schema, version 10: deletion requests that fail are retried apart, and a
-- deleted server stays deleted.
--
-- A deletion request that fails (a store down, a request no store accepts) no longer aborts the
-- ETL run: it records the failure and waits until retry_at, while loading goes on and the other
-- requests are carried out (etl/privacy.py).
ALTER TABLE deletion_requests
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN retry_at   timestamptz;

-- A server whose data an admin deleted: while resumed_at is NULL the bot records nothing of it
-- (capture and backfill both ask); once an admin opts it back in (`/privacy server-opt-in`),
-- backfill never reads history from before resumed_at, so the deleted past cannot come back.
-- Kept by deletion itself: it is the record of the deletion.
CREATE TABLE guild_tombstones (
    guild_id   bigint PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    deleted_by bigint,
    resumed_at timestamptz,
    resumed_by bigint
);
