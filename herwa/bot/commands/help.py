"""/help — what this server's tier offers, and which tier would unlock each other command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands

from herwa.bot.commands._common import embed
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

# Free to ask, and never cached: the answer follows the tier the moment it changes.
SPEC = CommandSpec("help", counts_quota=False, cacheable=False, ephemeral=True)

# Each command's lowest-ranked tier whose features include it.
_LOWEST_TIERS = """
SELECT DISTINCT ON (c.command) c.command, t.tier
FROM commands c
JOIN tier_features tf ON tf.feature = c.feature
JOIN tiers t ON t.tier = tf.tier
ORDER BY c.command, t.rank, t.tier
"""

Described = Sequence[app_commands.Command[Any, Any, None] | app_commands.Group]


def build(rt: CommandRuntime, others: Described) -> app_commands.Command[Any, Any, None]:
    """``others`` are the commands /help describes, as registered (their own descriptions)."""

    @app_commands.command(
        name="help", description="What this server's tier offers, and what a higher one unlocks"
    )
    @app_commands.guild_only()
    async def help_(interaction: discord.Interaction[Any]) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            async def work() -> Reply:
                access = ctx.entitled()
                lowest = {
                    row["command"]: row["tier"] for row in await ctx.deps.pool.fetch(_LOWEST_TIERS)
                }
                offered, locked = [], []
                listed: list[app_commands.Command[Any, Any, None] | app_commands.Group]
                listed = [*others, help_]
                for command in listed:
                    line = f"`/{command.name}` — {command.description}"
                    if access.allows(command.name, ctx.now):
                        offered.append(line)
                    elif command.name in lowest:
                        locked.append(f"{line} · **{lowest[command.name]}**")
                e = embed("Herwa on this server", f"Tier: **{access.tier}**")
                e.add_field(name="Yours to use", value="\n".join(offered) or "Nothing yet.")
                if locked:
                    e.add_field(name="With a higher tier", value="\n".join(locked))
                return Reply(embeds=(e,), ephemeral=True)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    return help_
