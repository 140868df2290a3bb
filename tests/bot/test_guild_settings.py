"""One ``guilds`` row, one reading of it: what /config writes is what capture and the commands
read, the bot's registration of a guild never overrides it, and every pod hears of a change."""

from __future__ import annotations

import asyncio

import asyncpg

from herwa.bot import guild_settings
from herwa.bot.guild_settings import GuildConfig, bot_defaults
from herwa.bot.metadata import upsert_meta
from herwa.config import BotSettings
from herwa.devstack import Endpoints

GUILD = 81_000_000_000_000_000


async def test_config_changes_are_read_alike_and_survive_the_bots_registration(
    migrated: Endpoints,
) -> None:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=3)
    listener = await asyncpg.connect(migrated.postgres_dsn)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(
        guild_settings.CONFIG_CHANNEL, lambda *args: heard.put_nowait(args[-1])
    )
    try:
        pod = BotSettings(snapshot_hour_utc=7, count_bot_messages=True)
        async with pool.acquire() as conn:
            assert await guild_settings.load(conn, GUILD) is None
            # A new guild's row starts with the pod's defaults, the platform's time zone
            # (HERWA_GUILD_TIMEZONE) included.
            defaults = bot_defaults(pod, "Europe/Berlin")
            await upsert_meta(conn, "guild", {"id": str(GUILD), "name": "g"}, defaults)
            assert await guild_settings.load(conn, GUILD) == GuildConfig(
                "Europe/Berlin", None, True, 7
            )

        await guild_settings.change(pool, GUILD, "timezone", "Asia/Kolkata")
        await guild_settings.change(pool, GUILD, "tracked_channel_ids", [12, 11])
        await guild_settings.change(pool, GUILD, "snapshot_hour_utc", 5)
        assert [await asyncio.wait_for(heard.get(), 10) for _ in range(3)] == [str(GUILD)] * 3

        async with pool.acquire() as conn:
            # The bot sees the guild again (a new GUILD_CREATE): the row stays the authority.
            await upsert_meta(
                conn, "guild", {"id": str(GUILD), "name": "renamed"}, bot_defaults(BotSettings())
            )
            one = await guild_settings.load(conn, GUILD)
            every = await guild_settings.load_all(conn)
        expected = GuildConfig("Asia/Kolkata", (12, 11), True, 5)
        assert one == expected
        assert every == {GUILD: expected}
        assert (expected.tracks(11), expected.tracks(12), expected.tracks(13)) == (
            True,
            True,
            False,
        )
        assert GuildConfig().tracks(13)  # no list: every channel
        assert not GuildConfig(tracked_channel_ids=()).tracks(13)
    finally:
        await listener.close()
        await pool.close()
