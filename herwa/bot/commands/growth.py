"""/growth — joins, leaves and member count per day, as a PNG series."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._charts import growth_png
from herwa.bot.commands._common import DAYS_HELP, END_HELP, Days, embed, number, resolve_range
from herwa.bot.commands._reply import Attachment, Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("growth")


def summary(points: list[analytics.GrowthPoint]) -> str:
    joins = sum(p.joins for p in points)
    leaves = sum(p.leaves for p in points)
    text = f"{number(joins)} joins, {number(leaves)} leaves, net {joins - leaves:+,}."
    counts = [p for p in points if p.member_count is not None]
    if counts:
        first, last = counts[0], counts[-1]
        text += (
            f" Members: {number(first.member_count or 0)} on {first.day.isoformat()}, "
            f"{number(last.member_count or 0)} on {last.day.isoformat()}."
        )
    return text


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="growth", description="Member joins, leaves and growth (PNG)")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    async def growth(
        interaction: discord.Interaction[Any], days: Days = 30, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)

            async def work() -> Reply:
                points = await analytics.growth(
                    ctx.deps.clickhouse, ctx.guild_id, span.tz, span.start_utc, span.end_utc
                )
                text = summary(points)
                png = await asyncio.to_thread(
                    growth_png,
                    [p.day for p in points],
                    [p.joins for p in points],
                    [p.leaves for p in points],
                    [p.member_count for p in points],
                    f"Member growth, {span.label()}",
                )
                e = embed("Member growth", f"{span.label()}\n{text}")
                e.set_image(url="attachment://growth.png")
                return Reply(embeds=(e,), files=(Attachment("growth.png", png, text),))

            return {"first": span.first, "last": span.last, "tz": span.tz}, work

        await rt.run(interaction, SPEC, prepare)

    return growth
