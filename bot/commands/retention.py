"""/retention — weekly join cohorts and how many were active N weeks later, as a PNG matrix."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._charts import retention_png
from herwa.bot.commands._common import END_HELP, Days, embed, resolve_range
from herwa.bot.commands._options import OptionError
from herwa.bot.commands._reply import Attachment, Reply
from herwa.bot.commands._runtime import Context, Runtime, Spec, Work

SPEC = Spec("retention")
MAX_WEEKS = 12


def _rates(c: analytics.Cohort, weeks: int) -> list[float | None]:
    return [c.active[n] / c.joined if c.joined else None for n in range(weeks)]


def summary(cohorts: list[analytics.Cohort], weeks: int) -> str:
    if not cohorts:
        return "No members joined in this range."
    lines = []
    for c in cohorts:
        cells = ", ".join(f"week {n}: {c.active[n]}" for n in range(weeks))
        lines.append(f"{c.week.isoformat()}: {c.joined} joined; active {cells}")
    return "\n".join(lines)


def build(rt: Runtime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="retention", description="Weekly join cohorts' retention (PNG)")
    @app_commands.describe(
        days="join window: members who first joined in these days form the cohorts",
        end=END_HELP,
        weeks=f"weeks to follow each cohort (1 to {MAX_WEEKS})",
    )
    @app_commands.guild_only()
    async def retention(
        interaction: discord.Interaction[Any],
        days: Days = 56,
        end: str | None = None,
        weeks: app_commands.Range[int, 1, MAX_WEEKS] = 8,
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)
            if not isinstance(weeks, int) or not 1 <= weeks <= MAX_WEEKS:
                raise OptionError(f"`weeks` must be between 1 and {MAX_WEEKS}.")

            async def work() -> Reply:
                cohorts = await analytics.retention(
                    ctx.deps.clickhouse,
                    ctx.guild_id,
                    span.tz,
                    span.start_utc,
                    span.end_utc,
                    weeks=weeks,
                )
                text = summary(cohorts, weeks)
                png = await asyncio.to_thread(
                    retention_png,
                    [c.week.isoformat() for c in cohorts],
                    [c.joined for c in cohorts],
                    [_rates(c, weeks) for c in cohorts],
                    f"Retention by join week, {span.label()}",
                )
                e = embed("Retention cohorts", f"{span.label()}\n{text}"[:4000])
                e.set_image(url="attachment://retention.png")
                return Reply(embeds=(e,), files=(Attachment("retention.png", png, text[:1000]),))

            return {"first": span.first, "last": span.last, "tz": span.tz, "w": weeks}, work

        await rt.run(interaction, SPEC, prepare)

    return retention
