"""/heatmap — messages by weekday and hour in the server's time zone, as a PNG."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._charts import WEEKDAYS, heatmap_png
from herwa.bot.commands._common import DAYS_HELP, END_HELP, Days, embed, number, resolve_range
from herwa.bot.commands._reply import Attachment, Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("heatmap")


def summary(cells: tuple[tuple[int, ...], ...], tz: str) -> str:
    total = sum(map(sum, cells))
    if total == 0:
        return f"No messages in this range ({tz})."
    day, hour = max(
        ((d, h) for d in range(7) for h in range(24)),
        key=lambda dh: (cells[dh[0]][dh[1]], -dh[0], -dh[1]),
    )
    per_day = [sum(row) for row in cells]
    busiest_day = max(range(7), key=lambda d: (per_day[d], -d))
    return (
        f"{number(total)} messages. Busiest hour: {WEEKDAYS[day]} "
        f"{hour:02d}:00-{(hour + 1) % 24:02d}:00 with {number(cells[day][hour])} messages. "
        f"Busiest day: {WEEKDAYS[busiest_day]} with {number(per_day[busiest_day])}. "
        f"Times in {tz}."
    )


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="heatmap", description="Activity by weekday and hour (PNG)")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    async def heatmap(
        interaction: discord.Interaction[Any], days: Days = 28, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)

            async def work() -> Reply:
                h = await analytics.heatmap(
                    ctx.deps.clickhouse, ctx.guild_id, span.tz, span.start_utc, span.end_utc
                )
                text = summary(h.cells, span.tz)
                png = await asyncio.to_thread(heatmap_png, h.cells, f"Messages, {span.label()}")
                e = embed("Activity heatmap", f"{span.label()}\n{text}")
                e.set_image(url="attachment://heatmap.png")
                return Reply(embeds=(e,), files=(Attachment("heatmap.png", png, text),))

            return {"first": span.first, "last": span.last, "tz": span.tz}, work

        await rt.run(interaction, SPEC, prepare)

    return heatmap
