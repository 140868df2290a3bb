"""/me — the invoking member's own figures (never anybody else's), answered privately."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import (
    DAYS_HELP,
    END_HELP,
    Days,
    duration,
    embed,
    number,
    resolve_range,
)
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("me", ephemeral=True)


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="me", description="Your own activity in this server")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    async def me(
        interaction: discord.Interaction[Any], days: Days = 30, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)

            async def work() -> Reply:
                s = await analytics.member_summary(
                    ctx.deps.clickhouse, ctx.guild_id, ctx.user_id, span.start_utc, span.end_utc
                )
                opted_out = await ctx.deps.pool.fetchval(
                    "SELECT true FROM opt_outs WHERE guild_id = $1 AND user_id = $2",
                    ctx.guild_id,
                    ctx.user_id,
                )
                e = embed("Your activity", span.label())
                e.add_field(name="Messages", value=number(s.messages))
                e.add_field(name="Active hours", value=number(s.active_hours))
                e.add_field(name="Channels", value=number(s.channels))
                e.add_field(name="Voice time", value=duration(s.voice_seconds))
                e.add_field(name="Voice sessions", value=number(s.voice_sessions))
                first = s.first_joined
                e.add_field(
                    name="First joined",
                    value=f"<t:{int(first.timestamp())}:D>" if first else "unknown",
                )
                if opted_out:
                    e.set_footer(text="You have opted out: nothing new is recorded about you.")
                return Reply(embeds=(e,), ephemeral=True)

            return {
                "user": ctx.user_id,
                "first": span.first,
                "last": span.last,
                "tz": span.tz,
            }, work

        await rt.run(interaction, SPEC, prepare)

    return me
