"""/channels — messages and distinct authors per channel, paginated, or one channel's figures;
only channels the invoking member can view (see _visibility.py)."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._autocomplete import suggest_channels
from herwa.bot.commands._common import (
    DAYS_HELP,
    END_HELP,
    PAGE_HELP,
    Days,
    check_page,
    embed,
    number,
    resolve_range,
)
from herwa.bot.commands._options import OptionError, parse_channel_id
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work
from herwa.bot.commands._visibility import can_view, scope_key, visible_channels

SPEC = CommandSpec("channels")


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="channels", description="Activity per channel")
    @app_commands.describe(
        days=DAYS_HELP, end=END_HELP, page=PAGE_HELP, channel="only this channel (#mention or id)"
    )
    @app_commands.guild_only()
    async def channels(
        interaction: discord.Interaction[Any],
        days: Days = 30,
        end: str | None = None,
        page: app_commands.Range[int, 1, 50] = 1,
        channel: str | None = None,
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)
            number_ = check_page(page)
            scope = await visible_channels(ctx)
            only: int | None = None
            if channel is not None:
                if not isinstance(channel, str):
                    raise OptionError("`channel` must be a #mention or a channel id.")
                only = parse_channel_id(channel, set(await ctx.guild_channels()))
                if not can_view(scope, only):
                    raise OptionError("You can only see figures of channels you can view.")
            size = ctx.deps.settings.page_size

            async def work() -> Reply:
                stats = await analytics.channel_stats(
                    ctx.deps.clickhouse, ctx.guild_id, span.start_utc, span.end_utc, scope=scope
                )
                if only is not None:
                    stats = [s for s in stats if s.channel_id == only] or [
                        analytics.ChannelStats(only, 0, 0)
                    ]
                start = (number_ - 1) * size
                shown = stats[start : start + size]
                lines = [
                    f"{rank}. <#{s.channel_id}> — {number(s.messages)} messages, "
                    f"{number(s.authors)} authors"
                    for rank, s in enumerate(shown, start + 1)
                ]
                body = "\n".join(lines) or "No activity in this range."
                e = embed("Channel activity", f"{span.label()}\n\n{body}")
                pages = max(1, -(-len(stats) // size))
                e.set_footer(text=f"Page {number_} of {pages}")
                return Reply(embeds=(e,))

            key = {
                "first": span.first,
                "last": span.last,
                "tz": span.tz,
                "page": number_,
                "channel": only,
                "visible": scope_key(scope),
            }
            return key, work

        await rt.run(interaction, SPEC, prepare)

    @channels.autocomplete("channel")
    async def channel_names(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await suggest_channels(rt.deps, interaction, current)

    return channels
