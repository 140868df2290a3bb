"""/overview — messages, active members, voice time, joins and leaves for a range."""

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

SPEC = CommandSpec("overview")


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="overview", description="Server overview for a range of days")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    async def overview(
        interaction: discord.Interaction[Any], days: Days = 30, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)

            async def work() -> Reply:
                o = await analytics.overview(
                    ctx.deps.clickhouse, ctx.guild_id, span.start_utc, span.end_utc
                )
                e = embed("Server overview", span.label())
                e.add_field(name="Messages", value=number(o.messages))
                e.add_field(name="Active members", value=number(o.active_members))
                e.add_field(name="Voice time", value=duration(o.voice_seconds))
                e.add_field(name="Voice members", value=number(o.voice_members))
                e.add_field(name="Joins", value=number(o.joins))
                e.add_field(name="Leaves", value=number(o.leaves))
                e.add_field(name="Net growth", value=f"{o.joins - o.leaves:+,}")
                return Reply(embeds=(e,))

            return {"first": span.first, "last": span.last, "tz": span.tz}, work

        await rt.run(interaction, SPEC, prepare)

    return overview
