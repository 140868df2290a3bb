-- Herwa Postgres schema, version 18: the bot fleet's generation, for changing the shard count
-- under traffic (blue/green resharding, herwa.bot.generations).
--
-- Discord routes a guild to shard (guild_id >> 22) % shard_count, so a fleet of another shard
-- count receives the same guilds on other sessions. Leases and gateway marks are keyed by the
-- shard count, but the state capture keeps per guild (open voice sessions, member counts) and
-- the rows keyed by receive time (leaves, voice sessions) are not: two fleets recording the
-- same guild would clash and count those twice. One generation records at a time: the one
-- whose shard count is `recording`. A fleet of the `target` count connects and identifies
-- (standby), then takes over all at once: the recording fleet stops, commits, and hands each
-- shard over with an anchor per guild; the new fleet records from each anchor on.
CREATE TABLE bot_fleet (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one),
    recording    integer NOT NULL CHECK (recording > 0),
    -- The operator's shard count (`herwa reshard`, run by the chart on every install and upgrade).
    target       integer NOT NULL CHECK (target > 0),
    -- steady: target = recording; standby: the target fleet connects; cutover: the recording
    -- fleet hands over, the target fleet records once every shard is handed over.
    phase        text NOT NULL DEFAULT 'steady' CHECK (phase IN ('steady', 'standby', 'cutover')),
    previous     integer CHECK (previous > 0),  -- the count recording before the last cut-over
    cutover_at   timestamptz,
    recording_since timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((phase = 'steady') = (target = recording))
);

-- One row per shard of the handing-over generation once it has stopped recording and
-- committed every row it received. recorded_until is set only for a shard whose owner was gone
-- (no anchors): the new fleet then records that shard's guilds from this time on.
CREATE TABLE bot_handovers (
    shard_count    integer NOT NULL CHECK (shard_count > 0),
    shard_id       integer NOT NULL CHECK (shard_id >= 0 AND shard_id < shard_count),
    recorded_until timestamptz,
    handed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_count, shard_id)
);

-- Per guild, the fingerprints of the last events the handing-over generation recorded among
-- those whose order matters (voice states, member joins and leaves, guild create/delete), and
-- when the last one was received. Discord delivers a guild's events in one order to every
-- session, so the new fleet finds this tail in what it received and records what follows.
CREATE TABLE bot_handover_anchors (
    shard_count integer NOT NULL CHECK (shard_count > 0),
    guild_id    bigint NOT NULL,
    tail        text[] NOT NULL CHECK (cardinality(tail) > 0),
    received_at timestamptz NOT NULL,
    PRIMARY KEY (shard_count, guild_id)
);
