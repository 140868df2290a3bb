"""Pieces the analytics commands share: the date range option pair, number formatting."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa.bot.commands._options import DateRange, OptionError, date_range
from herwa.bot.commands._runtime import Context

# Discord enforces these in its UI; the simulator (and a hostile client) need not, so the
# values are validated again in date_range.
Days = app_commands.Range[int, 1, 3650]
END_HELP = "last day of the range, YYYY-MM-DD (default: today)"
DAYS_HELP = "number of days to cover"
PAGE_HELP = "page of the list (10 per page)"
MAX_PAGES = 50
COLOUR = discord.Colour(0x5865F2)


async def resolve_range(ctx: Context, days: Any, end: Any) -> DateRange:
    if not isinstance(days, int) or isinstance(days, bool):
        raise OptionError("`days` must be a whole number.")
    if end is not None and not isinstance(end, str):
        raise OptionError("`end` must be a date written as YYYY-MM-DD.")
    config = await ctx.config()
    return date_range(
        days=days,
        end=end,
        tz=config.timezone,
        now=ctx.now,
        history_days=ctx.history_days,
        max_days=ctx.deps.settings.max_range_days,
        tier=ctx.entitled().tier,
    )


def check_page(page: Any) -> int:
    if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= MAX_PAGES:
        raise OptionError(f"`page` must be between 1 and {MAX_PAGES}.")
    return page


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def number(value: int | float) -> str:
    return f"{value:,}"


def embed(title: str, description: str) -> discord.Embed:
    return discord.Embed(title=title, description=description, colour=COLOUR)
