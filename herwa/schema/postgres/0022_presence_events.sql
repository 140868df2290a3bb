-- Presence transitions: a member's status (online, idle, dnd, offline) or the set of their
-- activity types changed. Captured only by a bot started with presence capture on (the
-- privileged GUILD_PRESENCES intent) and only for servers whose tier grants the `presence`
-- feature. Discord's PRESENCE_UPDATE carries no time: `at` is the bot's receive time, so the
-- rows are keyed by it like member leaves (a fenced shard stages none, see bot/shard_state.py).
-- activity_types is a bit set: bit n is an activity of Discord's type n (0 playing,
-- 1 streaming, 2 listening, 3 watching, 4 custom status, 5 competing).
-- Conventions of a staging table since 0006 and 0016: staged_xid taken from the writing
-- transaction, its index, and the trigger that re-stages an updated row.
CREATE TABLE presence_events (
    guild_id       bigint NOT NULL,
    user_id        bigint NOT NULL,
    at             timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('online', 'idle', 'dnd', 'offline')),
    activity_types smallint NOT NULL CHECK (activity_types BETWEEN 0 AND 63),
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    staged_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (guild_id, user_id, at)
);
CREATE INDEX presence_events_staged ON presence_events (staged_xid);
CREATE TRIGGER presence_events_restage BEFORE UPDATE ON presence_events FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
