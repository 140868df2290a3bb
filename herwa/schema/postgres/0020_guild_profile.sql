-- What GUILD_CREATE and GUILD_UPDATE say of a server besides its name: its icon (Discord's image
-- hash) and its owner, kept current as they change.
ALTER TABLE guilds
    ADD COLUMN icon     text,
    ADD COLUMN owner_id bigint;
