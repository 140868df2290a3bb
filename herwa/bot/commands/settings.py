"""/config — admins: the server's time zone, tracked channels and daily snapshot hour."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa.bot import guild_settings
from herwa.bot.commands._autocomplete import suggest_channels, suggest_zones
from herwa.bot.commands._common import embed
from herwa.bot.commands._options import OptionError, bounded_int, parse_channel_ids, parse_timezone
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("config", admin=True, counts_quota=False, cacheable=False, ephemeral=True)


async def _set(ctx: Context, rt: CommandRuntime, setting: str, value: Any) -> None:
    await guild_settings.change(ctx.deps.pool, ctx.guild_id, setting, value)
    # Cached charts were drawn for the old settings (e.g. the old time zone).
    await rt.cache.drop_guild(ctx.guild_id)


def build(rt: CommandRuntime) -> app_commands.Group:
    group = app_commands.Group(
        name="config",
        description="Admins: Herwa's settings for this server",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    @group.command(name="show", description="Show this server's settings")
    async def show(interaction: discord.Interaction[Any]) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            async def work() -> Reply:
                config = await ctx.config()
                tracked = (
                    "all channels"
                    if config.tracked_channel_ids is None
                    else " ".join(f"<#{c}>" for c in config.tracked_channel_ids) or "none"
                )
                e = embed("Settings", "")
                e.add_field(name="Time zone", value=config.timezone)
                e.add_field(name="Tracked channels", value=tracked, inline=False)
                e.add_field(
                    name="Daily snapshot hour (UTC)", value=f"{config.snapshot_hour_utc:02d}:00"
                )
                return Reply(embeds=(e,), ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    @group.command(name="timezone", description="Time zone for heatmaps and day boundaries")
    @app_commands.describe(name="IANA name, e.g. Europe/Berlin")
    async def timezone(interaction: discord.Interaction[Any], name: str) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            if not isinstance(name, str):
                raise OptionError("Give an IANA time zone name such as Europe/Berlin.")
            zone = parse_timezone(name)

            async def work() -> Reply:
                await _set(ctx, rt, "timezone", zone)
                return Reply(f"Time zone set to **{zone}**.", ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    @timezone.autocomplete("name")
    async def zone_names(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return suggest_zones(current)

    @group.command(name="channels", description="Channels to track ('all' for every channel)")
    @app_commands.describe(channels="#mentions or ids separated by spaces, or 'all'")
    async def channels(interaction: discord.Interaction[Any], channels: str) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            if not isinstance(channels, str):
                raise OptionError("Channels must be given as #mentions or numeric channel ids.")
            ids: list[int] | None = None
            if channels.strip().lower() != "all":
                ids = parse_channel_ids(channels, set(await ctx.guild_channels()))

            async def work() -> Reply:
                await _set(ctx, rt, "tracked_channel_ids", ids)
                if ids is None:
                    return Reply("Every channel is tracked now.", ephemeral=True)
                listed = " ".join(f"<#{c}>" for c in ids)
                return Reply(f"Tracking {len(ids)} channel(s): {listed}", ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    @channels.autocomplete("channels")
    async def channel_names(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await suggest_channels(rt.deps, interaction, current, several=True, admin=True)

    @group.command(name="snapshot-hour", description="UTC hour of the daily member-count snapshot")
    @app_commands.describe(hour="0 to 23, UTC")
    async def snapshot_hour(
        interaction: discord.Interaction[Any], hour: app_commands.Range[int, 0, 23]
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            if not isinstance(hour, int) or isinstance(hour, bool):
                raise OptionError("`hour` must be a whole number from 0 to 23.")
            value = bounded_int(hour, "hour", 0, 23)

            async def work() -> Reply:
                await _set(ctx, rt, "snapshot_hour_utc", value)
                return Reply(f"Daily snapshot at **{value:02d}:00 UTC**.", ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    return group
