-- Herwa Postgres schema, version 17: the last complete pass of history expiry.
--
-- Each server's ClickHouse rows older than its tier's history_days are deleted by the ETL
-- (etl/expiry.py). A pass is due once per UTC day and whenever a server's window changes (a
-- GuildSubscription added, changed or removed, the default tier re-seeded): the fingerprint of
-- the windows and the UTC day it was computed on tells. A pass cut short by its time budget is
-- not recorded, so the next run carries it on. One row: the figures of the last complete pass,
-- for the operator and dashboards.
CREATE TABLE history_expiry (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint  text NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now(),
    guilds       integer NOT NULL,            -- servers that lost rows in the pass
    rows_expired jsonb NOT NULL DEFAULT '{}'  -- "store.table" -> rows deleted
);
