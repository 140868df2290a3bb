-- Herwa Postgres schema, version 13: monthly query quotas, durable.
--
-- Redis enforces the quota atomically (check-then-increment in one script) and is the fast
-- path; this table is the record. Every admitted use and every refund is applied here too, and
-- a Redis key that is missing (Redis restarted without its data, or emptied) is seeded from this
-- row before the check, so losing Redis never resets a server's quota mid-month.
CREATE TABLE quota_usage (
    guild_id   bigint NOT NULL,
    quota      text NOT NULL,
    month      date NOT NULL CHECK (extract(day FROM month) = 1),
    used       integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, quota, month)
);
