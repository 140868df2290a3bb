-- Herwa Postgres schema, version 21: reactions added to and removed from messages.
--
-- Staged like every event family (0001, 0006, 0016): ch_ingested_at marks it as staging,
-- staged_xid is what the ETL claims by, and any update re-stages the row.
--
-- MESSAGE_REACTION_ADD and MESSAGE_REACTION_REMOVE carry no time, so `at` is the bot's receive
-- time and part of the key: a member may add, remove and add the same emoji again, and each is
-- an event. A replay after a RESUME stores nothing twice because the gateway mark commits with
-- the rows (README "Replays, restarts and Redis"); a fenced pod stages none of these rows
-- (bot/shard_state.py), and a resharding fleet records them after its anchor (bot/generations.py).
CREATE TABLE message_reactions (
    guild_id       bigint NOT NULL,
    channel_id     bigint NOT NULL,             -- the parent channel for reactions in threads
    message_id     bigint NOT NULL,
    user_id        bigint NOT NULL,             -- who reacted
    emoji          text NOT NULL,               -- a custom emoji's id, else the unicode emoji
    emoji_name     text,                        -- a custom emoji's name, for display
    event          text NOT NULL CHECK (event IN ('add', 'remove')),
    at             timestamptz NOT NULL,        -- received
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    staged_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (message_id, user_id, emoji, event, at)
);
CREATE INDEX message_reactions_staged ON message_reactions (staged_xid);
CREATE TRIGGER message_reactions_restage BEFORE UPDATE ON message_reactions FOR EACH ROW
    WHEN (NEW.staged_xid = OLD.staged_xid AND (NEW.ch_ingested_at IS NULL
          OR NEW.ch_ingested_at IS NOT DISTINCT FROM OLD.ch_ingested_at))
    EXECUTE FUNCTION herwa_restage();
