"""/online — distinct members online (online, idle or do not disturb) at some point in each
hour of the server's time zone, from the presence transitions the bot records when the
server's tier grants presence."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import END_HELP, embed, number, resolve_range
from herwa.bot.commands._options import OptionError
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("online")
# One line per hour: a week of hours still fits an embed's 4,096 characters.
OnlineDays = app_commands.Range[int, 1, 7]


def summary(hours: list[analytics.OnlineHour], label: str) -> str:
    if not hours:
        return f"{label}\nNobody was seen online in this range."
    peak = max(hours, key=lambda h: (h.members, -h.start.timestamp()))
    lines = [
        f"{label}",
        f"Peak: {number(peak.members)} members at {peak.start:%a %Y-%m-%d %H:00}.",
        "",
        *(f"`{h.start:%a %m-%d %H:00}` {number(h.members)}" for h in hours),
    ]
    return "\n".join(lines)


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="online", description="Members online by hour")
    @app_commands.describe(days="number of days to cover (at most 7)", end=END_HELP)
    @app_commands.guild_only()
    async def online(
        interaction: discord.Interaction[Any], days: OnlineDays = 1, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            # Discord enforces the range in its UI only.
            if isinstance(days, int) and not isinstance(days, bool) and days > 7:
                raise OptionError("`days` must be between 1 and 7.")
            span = await resolve_range(ctx, days, end)
            # A member online now stays online until their next transition: count them up to
            # this minute, not in hours still to come.
            now = ctx.now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            until = min(span.end_utc, now)

            async def work() -> Reply:
                hours = await analytics.online_by_hour(
                    ctx.deps.clickhouse, ctx.guild_id, span.tz, span.start_utc, until
                )
                return Reply(
                    embeds=(embed("Online members by hour", summary(hours, span.label())),)
                )

            key = {"first": span.first, "last": span.last, "tz": span.tz, "until": until}
            return key, work

        await rt.run(interaction, SPEC, prepare)

    return online
