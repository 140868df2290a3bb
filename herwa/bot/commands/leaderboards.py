"""/leaderboard and /voice-leaderboard — top members by messages or voice time, paginated,
counting only the channels the invoking member can view (see _visibility.py)."""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import (
    DAYS_HELP,
    END_HELP,
    PAGE_HELP,
    Days,
    check_page,
    duration,
    embed,
    number,
    resolve_range,
)
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work
from herwa.bot.commands._visibility import scope_key, visible_channels

MESSAGES = CommandSpec("leaderboard")
VOICE = CommandSpec("voice-leaderboard")


def page_lines(
    entries: list[analytics.Entry], page: int, size: int, kind: Literal["messages", "voice"]
) -> tuple[list[str], bool]:
    """The page's lines and whether another page follows (one extra row was fetched)."""
    start = (page - 1) * size
    shown = entries[start : start + size]
    lines = []
    for rank, e in enumerate(shown, start + 1):
        value = f"{number(int(e.value))} messages" if kind == "messages" else duration(e.value)
        lines.append(f"{rank}. <@{e.user_id}> — {value}")
    return lines, len(entries) > start + size


async def hidden_members(ctx: Context) -> list[int]:
    """Members of this server who asked (``/privacy hide-from-leaderboards``) not to be named."""
    rows = await ctx.deps.pool.fetch(
        "SELECT user_id FROM leaderboard_hidden WHERE guild_id = $1", ctx.guild_id
    )
    return [row["user_id"] for row in rows]


def _build(
    rt: CommandRuntime,
    spec: CommandSpec,
    kind: Literal["messages", "voice"],
    title: str,
    description: str,
) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name=spec.command, description=description)
    @app_commands.describe(days=DAYS_HELP, end=END_HELP, page=PAGE_HELP)
    @app_commands.guild_only()
    async def board(
        interaction: discord.Interaction[Any],
        days: Days = 30,
        end: str | None = None,
        page: app_commands.Range[int, 1, 50] = 1,
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)
            number_ = check_page(page)
            scope = await visible_channels(ctx)
            size = ctx.deps.settings.page_size
            hidden = await hidden_members(ctx)

            async def work() -> Reply:
                entries = await analytics.leaderboard(
                    ctx.deps.clickhouse,
                    ctx.guild_id,
                    span.start_utc,
                    span.end_utc,
                    kind=kind,
                    limit=number_ * size + 1,
                    scope=scope,
                    hidden=hidden,
                )
                lines, more = page_lines(entries, number_, size, kind)
                if not lines:
                    body = "Nobody on this page." if number_ > 1 else "No activity in this range."
                else:
                    body = "\n".join(lines)
                e = embed(title, f"{span.label()}\n\n{body}")
                footer = f"Page {number_}"
                if more:
                    footer += f" · more on page {number_ + 1}"
                e.set_footer(text=footer)
                return Reply(embeds=(e,))

            key = {
                "first": span.first,
                "last": span.last,
                "tz": span.tz,
                "page": number_,
                "visible": scope_key(scope),
            }
            return key, work

        await rt.run(interaction, spec, prepare)

    return board


def build(rt: CommandRuntime) -> list[app_commands.Command[Any, Any, None]]:
    return [
        _build(rt, MESSAGES, "messages", "Message leaderboard", "Top members by messages"),
        _build(rt, VOICE, "voice", "Voice leaderboard", "Top members by time in voice"),
    ]
