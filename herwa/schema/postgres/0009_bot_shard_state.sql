-- Herwa Postgres schema, version 9: the bot's shard state, committed in the same transaction as
-- the staging rows it describes.
--
-- A gateway mark says "every event of this session up to seq is staged". Kept in Redis and
-- written after the commit, it could be lost or lag behind the rows (Redis restarted or
-- emptied): the next owner then RESUMEd from an older mark and Discord replayed events whose
-- rows were already stored, and rows keyed by a receive time (member and bot leaves, voice
-- sessions) were stored twice. Committed with the rows, the mark never lags them and outlives
-- Redis, so a RESUME replays exactly the events that were not staged.
--
-- epoch fences the shard in Postgres itself: a new owner bumps it when it loads the mark, and
-- a flush whose epoch is no longer current writes none of that shard's state and stages none of
-- its rows keyed by receive time (the new owner's RESUME replays those events). Redis leases decide who should own a shard; this decides whose rows
-- count, even while Redis is unreachable or was emptied.
CREATE TABLE bot_gateway_marks (
    shard_count integer NOT NULL CHECK (shard_count > 0),
    shard_id    integer NOT NULL CHECK (shard_id >= 0 AND shard_id < shard_count),
    epoch       bigint NOT NULL DEFAULT 1,
    session_id  text,
    seq         bigint,
    resume_url  text,
    alive_at    timestamptz,   -- the last moment the shard was known connected
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_count, shard_id)
);

-- Open voice sessions (one per member in voice), written with the rows that closed the previous
-- one, so a restart, a handover or an emptied Redis continues each session instead of losing
-- its start. state is the bot's own encoding (herwa.bot.voice.OpenSession).
CREATE TABLE bot_voice_open (
    guild_id bigint NOT NULL,
    user_id  bigint NOT NULL,
    state    jsonb NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- The member count per guild as the gateway events left it: a shard that RESUMEs receives no
-- GUILD_CREATE, and the daily snapshot reads this count.
CREATE TABLE bot_member_counts (
    guild_id     bigint PRIMARY KEY,
    member_count integer NOT NULL CHECK (member_count >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
