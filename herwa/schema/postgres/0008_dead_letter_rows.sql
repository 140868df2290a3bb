-- Herwa Postgres schema, version 8: rows Postgres refused, kept instead of retried forever.
--
-- The bot validates every gateway field at capture, so nothing should land here. A staging row
-- (or a guild/channel metadata row) that Postgres still refuses with a data or constraint error
-- is isolated from its batch by bisection, stored here with the error, and counted
-- (herwa_bot_dead_letter_rows_total{table}); everything else in the batch commits. `row` holds
-- the values as the bot built them, column by column: JSON scalars where the value is one
-- Postgres accepts, otherwise the value's escaped Python repr (a NUL byte or a lone surrogate
-- cannot be stored as text). guild_id / user_id are copied out when they are valid bigints so a
-- server's or a member's deletion can find the rows.
CREATE TABLE dead_letter_rows (
    dead_letter_id bigserial PRIMARY KEY,
    table_name     text NOT NULL,
    row            jsonb NOT NULL,
    reason         text NOT NULL,
    sqlstate       text,
    guild_id       bigint,
    user_id        bigint,
    captured_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_rows_guild ON dead_letter_rows (guild_id, user_id);
