-- Herwa Postgres schema, version 15: a backfill's pending marker, committed with the gateway mark.
--
-- A guild's backfill is recorded as pending in the same transaction as the gateway mark that
-- covers the GUILD_CREATE which started it, and removed in the transaction that commits its
-- last rows. Whoever owns the shard next (after a handover, a crash, Redis losing its data)
-- finishes every backfill still named here: a RESUME brings no GUILD_CREATE to start it again.
CREATE TABLE bot_backfill_pending (
    guild_id   bigint PRIMARY KEY,
    -- Read history up to this message id (the moment the backfill was scheduled).
    until_id   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
