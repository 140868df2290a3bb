-- Herwa Postgres schema, version 1: configuration (source of truth) and the staging area.
--
-- Staging tables receive what the bot captures and are drained by the ETL into ClickHouse:
-- every staging row carries ch_ingested_at (NULL until loaded), and a partial index over the
-- un-ingested rows keeps the ETL's claim query (… WHERE ch_ingested_at IS NULL … FOR UPDATE SKIP
-- LOCKED) cheap however large the ingested backlog grows before cleanup. Natural ids are primary
-- keys so a retried bot flush (INSERT … ON CONFLICT DO NOTHING) can never duplicate a row.
-- Discord snowflakes fit in bigint (63 bits used until the year 2154).

-- ---------------------------------------------------------------- configuration

CREATE TABLE guilds (
    guild_id            bigint PRIMARY KEY,
    name                text,
    timezone            text NOT NULL DEFAULT 'UTC',
    -- NULL = every channel is tracked; otherwise only these (and their threads).
    tracked_channel_ids bigint[],
    snapshot_hour_utc   smallint NOT NULL DEFAULT 0 CHECK (snapshot_hour_utc BETWEEN 0 AND 23),
    count_bot_messages  boolean NOT NULL DEFAULT false,
    joined_at           timestamptz,
    left_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    channel_id  bigint PRIMARY KEY,
    guild_id    bigint NOT NULL,
    parent_id   bigint,
    name        text,
    kind        text NOT NULL,   -- text, voice, stage, forum, thread, category, …
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_guild ON channels (guild_id);

CREATE TABLE features (
    feature     text PRIMARY KEY,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE tiers (
    tier        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    rank        integer NOT NULL DEFAULT 0,     -- orders tiers: "upgrade to …" names the lowest
    quotas      jsonb NOT NULL DEFAULT '{}'     -- e.g. {"queries_per_month": 1000}
);

CREATE TABLE tier_features (
    tier    text NOT NULL REFERENCES tiers ON DELETE CASCADE,
    feature text NOT NULL REFERENCES features ON DELETE CASCADE,
    PRIMARY KEY (tier, feature)
);

CREATE TABLE commands (
    command     text PRIMARY KEY,
    feature     text NOT NULL REFERENCES features,
    description text NOT NULL DEFAULT ''
);

-- One row per guild: what the owning GuildSubscription grants, already resolved (tier features
-- plus overrides), so the bot's cache rebuild is a single-row read.
CREATE TABLE entitlements (
    guild_id         bigint PRIMARY KEY,
    tier             text NOT NULL REFERENCES tiers,
    features         text[] NOT NULL,
    quotas           jsonb NOT NULL DEFAULT '{}',
    valid_until      timestamptz,
    suspended        boolean NOT NULL DEFAULT false,
    source_namespace text NOT NULL,
    source_name      text NOT NULL,
    source_uid       text NOT NULL,
    generation       bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- A member who opted out of statistics in a guild: their events are never loaded.
CREATE TABLE opt_outs (
    guild_id   bigint NOT NULL,
    user_id    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE deletion_requests (
    request_id   bigserial PRIMARY KEY,
    scope        text NOT NULL CHECK (scope IN ('user', 'guild')),
    guild_id     bigint NOT NULL,
    user_id      bigint,
    requested_by bigint,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    CHECK ((scope = 'user') = (user_id IS NOT NULL))
);
CREATE INDEX deletion_requests_pending ON deletion_requests (requested_at) WHERE completed_at IS NULL;

-- ---------------------------------------------------------------- staging

CREATE TABLE message_events (
    message_id     bigint PRIMARY KEY,
    guild_id       bigint NOT NULL,
    channel_id     bigint NOT NULL,             -- the parent channel for messages in threads
    thread_id      bigint,
    author_id      bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    kind           text NOT NULL CHECK (kind IN
                       ('text', 'attachment', 'embed', 'sticker', 'reply', 'system', 'unknown')),
    is_bot         boolean NOT NULL,
    source         text NOT NULL DEFAULT 'gateway' CHECK (source IN ('gateway', 'backfill')),
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz
);

-- Edits and deletes arrive without the author; they are staged apart and joined by message id.
CREATE TABLE message_edits (
    message_id     bigint NOT NULL,
    edited_at      timestamptz NOT NULL,
    guild_id       bigint NOT NULL,
    channel_id     bigint NOT NULL,
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    PRIMARY KEY (message_id, edited_at)
);

CREATE TABLE message_deletions (
    message_id     bigint PRIMARY KEY,
    guild_id       bigint NOT NULL,
    channel_id     bigint NOT NULL,
    deleted_at     timestamptz NOT NULL,
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz
);

-- A closed voice session; open sessions live in Redis until they end. session_id is derived
-- from (guild, user, channel, joined_at) so a session closed twice (reconcile + leave) is one row.
CREATE TABLE voice_sessions (
    session_id       uuid PRIMARY KEY,
    guild_id         bigint NOT NULL,
    channel_id       bigint NOT NULL,
    user_id          bigint NOT NULL,
    channel_kind     text NOT NULL DEFAULT 'voice' CHECK (channel_kind IN ('voice', 'stage')),
    joined_at        timestamptz NOT NULL,
    left_at          timestamptz NOT NULL,
    duration_seconds double precision GENERATED ALWAYS AS
                         (extract(epoch FROM left_at - joined_at)) STORED,
    muted_seconds    double precision NOT NULL DEFAULT 0,
    close_reason     text NOT NULL CHECK (close_reason IN
                         ('leave', 'move', 'disconnect', 'reconcile', 'expired', 'guild_left')),
    is_bot           boolean NOT NULL DEFAULT false,
    captured_at      timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at   timestamptz,
    CHECK (left_at >= joined_at)
);

CREATE TABLE member_events (
    guild_id           bigint NOT NULL,
    user_id            bigint NOT NULL,
    event              text NOT NULL CHECK (event IN ('join', 'leave')),
    at                 timestamptz NOT NULL,
    account_created_at timestamptz NOT NULL,   -- from the user's snowflake
    is_bot             boolean NOT NULL DEFAULT false,
    captured_at        timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at     timestamptz,
    PRIMARY KEY (guild_id, user_id, event, at)
);

-- The bot itself joining or leaving a guild.
CREATE TABLE guild_events (
    guild_id       bigint NOT NULL,
    event          text NOT NULL CHECK (event IN ('join', 'leave')),
    at             timestamptz NOT NULL,
    member_count   integer,
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    PRIMARY KEY (guild_id, event, at)
);

-- Upserted once per guild per day; an update sets ch_ingested_at back to NULL so the newer
-- count is loaded again (ClickHouse keeps the latest by taken_at).
CREATE TABLE member_count_snapshots (
    guild_id       bigint NOT NULL,
    day            date NOT NULL,
    member_count   integer NOT NULL CHECK (member_count >= 0),
    taken_at       timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    PRIMARY KEY (guild_id, day)
);

-- Command usage counted in Redis and drained here by the ETL; drain_id makes a retried drain
-- of the same Redis snapshot a no-op.
CREATE TABLE command_usage (
    drain_id       text NOT NULL,
    guild_id       bigint NOT NULL,
    command        text NOT NULL,
    hour           timestamptz NOT NULL,
    outcome        text NOT NULL,
    invocations    integer NOT NULL CHECK (invocations > 0),
    captured_at    timestamptz NOT NULL DEFAULT now(),
    ch_ingested_at timestamptz,
    PRIMARY KEY (drain_id, guild_id, command, hour, outcome)
);

CREATE INDEX message_events_pending ON message_events (message_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX message_events_ingested ON message_events (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX message_events_channel ON message_events (channel_id, message_id);
CREATE INDEX message_edits_pending ON message_edits (message_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX message_edits_ingested ON message_edits (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX message_deletions_pending ON message_deletions (message_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX message_deletions_ingested ON message_deletions (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX voice_sessions_pending ON voice_sessions (session_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX voice_sessions_ingested ON voice_sessions (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX member_events_pending ON member_events (guild_id, user_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX member_events_ingested ON member_events (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX guild_events_pending ON guild_events (guild_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX guild_events_ingested ON guild_events (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX member_count_snapshots_pending ON member_count_snapshots (guild_id, day) WHERE ch_ingested_at IS NULL;
CREATE INDEX member_count_snapshots_ingested ON member_count_snapshots (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
CREATE INDEX command_usage_pending ON command_usage (guild_id) WHERE ch_ingested_at IS NULL;
CREATE INDEX command_usage_ingested ON command_usage (ch_ingested_at) WHERE ch_ingested_at IS NOT NULL;
