-- Members who asked not to be named on this server's leaderboards. Unlike an opt-out, their
-- activity is still recorded and counts in every total; only the ranked lists leave them out.
CREATE TABLE leaderboard_hidden (
    guild_id  bigint      NOT NULL,
    user_id   bigint      NOT NULL,
    hidden_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, user_id)
);
