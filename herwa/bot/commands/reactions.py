"""/reactions — the most reacted messages and the emoji used most over a range, only in the
channels the invoking member can view (see _visibility.py and analytics/reactions.py)."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import DAYS_HELP, END_HELP, Days, embed, number, resolve_range
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work
from herwa.bot.commands._visibility import scope_key, visible_channels

SPEC = CommandSpec("reactions")
TOP = 10
NAME_SHOWN = 32  # Discord's longest emoji name: ten fit a field's 1,024 characters


def emoji_text(e: analytics.EmojiUse) -> str:
    """A unicode emoji as itself; a custom one by its name (Discord renders ``<:name:id>``
    only for emoji the reader's client knows, so the name is what always reads)."""
    if not e.emoji.isdecimal():
        return e.emoji
    return f":{e.name[:NAME_SHOWN]}:" if e.name else f"emoji {e.emoji}"


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="reactions", description="Most reacted messages and top emoji")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    async def reactions(
        interaction: discord.Interaction[Any], days: Days = 30, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)
            scope = await visible_channels(ctx)

            async def work() -> Reply:
                r = await analytics.reactions(
                    ctx.deps.clickhouse,
                    ctx.guild_id,
                    span.start_utc,
                    span.end_utc,
                    limit=TOP,
                    scope=scope,
                )
                gid = ctx.guild_id
                messages = [
                    f"{rank}. https://discord.com/channels/{gid}/{m.channel_id}/{m.message_id}"
                    f" — {number(m.reactions)} reactions from {number(m.reactors)} members"
                    for rank, m in enumerate(r.messages, 1)
                ]
                emoji = [
                    f"{rank}. {emoji_text(use)} — {number(use.reactions)}"
                    for rank, use in enumerate(r.emoji, 1)
                ]
                # The list goes in the description (4,096 characters): ten message links
                # would overflow a field's 1,024.
                listed = "\n".join(messages) or "No reactions in this range."
                e = embed(
                    "Reactions",
                    f"{span.label()}\n\n{number(r.added)} reactions added by "
                    f"{number(r.reactors)} members, {number(r.removed)} removed.\n\n"
                    f"**Most reacted messages**\n{listed}",
                )
                e.add_field(name="Top emoji", value="\n".join(emoji) or "—", inline=False)
                return Reply(embeds=(e,))

            key = {
                "first": span.first,
                "last": span.last,
                "tz": span.tz,
                "visible": scope_key(scope),
            }
            return key, work

        await rt.run(interaction, SPEC, prepare)

    return reactions
