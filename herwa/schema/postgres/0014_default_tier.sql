-- Herwa Postgres schema, version 14: the platform's default tier.
--
-- Every guild the bot is in gets the default tier (the platform file's `default_tier`) unless a
-- GuildSubscription's entitlement row overrides it; removing that row falls back to it again.
-- The seeder marks exactly one tier; the partial unique index makes a second mark an error.
ALTER TABLE tiers ADD COLUMN is_default boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX tiers_one_default ON tiers (is_default) WHERE is_default;
