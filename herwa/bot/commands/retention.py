"""/retention — weekly join cohorts and how many were active N weeks later, as a PNG matrix.

Active means a message by default; ``activity:voice`` draws voice participation instead (a
voice session started in that week), the specification's "join dates against voice
participation weeks later". The text lists both, side by side.
"""

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
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

SPEC = CommandSpec("retention")
MAX_WEEKS = 12
ACTIVITIES = ("messages", "voice")


# A week that has not begun yet: blank in the chart, this in the text.
NOT_YET = "-"


def _counts(c: analytics.Cohort, activity: str) -> tuple[int | None, ...]:
    return c.voice_active if activity == "voice" else c.active


def _rates(c: analytics.Cohort, weeks: int, activity: str) -> list[float | None]:
    counts = _counts(c, activity)
    return [
        count / c.joined if c.joined and count is not None else None for count in counts[:weeks]
    ]


def _cell(count: int | None) -> str:
    return NOT_YET if count is None else str(count)


def summary(cohorts: list[analytics.Cohort], weeks: int) -> str:
    if not cohorts:
        return "No members joined in this range."
    lines = []
    for c in cohorts:
        active = ", ".join(f"week {n}: {_cell(c.active[n])}" for n in range(weeks))
        voice = ", ".join(f"week {n}: {_cell(c.voice_active[n])}" for n in range(weeks))
        lines.append(f"{c.week.isoformat()}: {c.joined} joined; active {active}; in voice {voice}")
    return "\n".join(lines)


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="retention", description="Weekly join cohorts' retention (PNG)")
    @app_commands.describe(
        days="join window: members who first joined in these days form the cohorts",
        end=END_HELP,
        weeks=f"weeks to follow each cohort (1 to {MAX_WEEKS})",
        activity="what counts as active in the chart: sending messages or joining voice",
    )
    @app_commands.choices(
        activity=[app_commands.Choice(name=a, value=a) for a in ACTIVITIES],
    )
    @app_commands.guild_only()
    async def retention(
        interaction: discord.Interaction[Any],
        days: Days = 56,
        end: str | None = None,
        weeks: app_commands.Range[int, 1, MAX_WEEKS] = 8,
        activity: str = "messages",
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)
            if not isinstance(weeks, int) or not 1 <= weeks <= MAX_WEEKS:
                raise OptionError(f"`weeks` must be between 1 and {MAX_WEEKS}.")
            if activity not in ACTIVITIES:
                raise OptionError("`activity` must be `messages` or `voice`.")

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
                    [_rates(c, weeks, activity) for c in cohorts],
                    f"Retention by join week ({activity}), {span.label()}",
                )
                e = embed("Retention cohorts", f"{span.label()}\n{text}"[:4000])
                e.set_image(url="attachment://retention.png")
                return Reply(embeds=(e,), files=(Attachment("retention.png", png, text[:1000]),))

            key = {"first": span.first, "last": span.last, "tz": span.tz, "w": weeks, "a": activity}
            return key, work

        await rt.run(interaction, SPEC, prepare)

    return retention
