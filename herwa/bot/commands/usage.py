"""/usage — the server's tier, query quota and how much of it this month has used."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from herwa.bot.commands._common import embed, number
from herwa.bot.commands._gate import month_bounds
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

# Reading the quota must not spend it, and must never come from a cache.
SPEC = CommandSpec("usage", counts_quota=False, cacheable=False, ephemeral=True)


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="usage", description="This server's query quota and usage")
    @app_commands.guild_only()
    async def usage(interaction: discord.Interaction[Any]) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            async def work() -> Reply:
                used = await rt.gate.quota_used(ctx.guild_id, ctx.now)
                limit = ctx.entitled().quotas.get(rt.gate.quota_name)
                _, resets = month_bounds(ctx.now)
                e = embed("Usage this month", f"Tier: **{ctx.entitled().tier}**")
                if limit is None:
                    e.add_field(name="Queries", value=f"{number(used)} (no limit)")
                else:
                    left = max(0, limit - used)
                    e.add_field(name="Queries", value=f"{number(used)} of {number(limit)}")
                    e.add_field(name="Left", value=number(left))
                e.add_field(name="Resets", value=f"<t:{int(resets.timestamp())}:R>")
                history = ctx.history_days
                if history is not None:
                    e.add_field(name="History", value=f"{number(history)} days")
                return Reply(embeds=(e,), ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    return usage
