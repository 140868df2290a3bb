"""/privacy — a member opts out (or back in), hides from the leaderboards (or shows again) or
asks for their data to be deleted; an admin asks for the whole server's data to be deleted, or
opts the server back in. Requests are rows in Postgres (``opt_outs``, ``leaderboard_hidden``,
``deletion_requests``, ``guild_tombstones``); the ETL carries deletions out in every store, and
the bot records nothing of a deleted server until it is opted back in (bot/tombstones.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord
from discord import app_commands

from herwa.bot.commands._options import OptionError
from herwa.bot.commands._reply import Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

# Ungated: opting out and asking for deletion are members' rights, not a paid feature.
SPEC = CommandSpec("privacy", counts_quota=False, cacheable=False, ephemeral=True, gated=False)
ADMIN_SPEC = CommandSpec(
    "privacy", counts_quota=False, cacheable=False, ephemeral=True, admin=True, gated=False
)


def _confirmed(confirm: Any) -> None:
    if confirm is not True:
        raise OptionError("Nothing was done: set `confirm` to True to go ahead.")


@dataclass(frozen=True)
class _MemberChoice:
    """A subcommand that records one member's choice with one statement on (guild, user)."""

    name: str
    description: str
    sql: str
    answer: str


_MEMBER_CHOICES = (
    _MemberChoice(
        "opt-out",
        "Stop recording statistics about you here",
        "INSERT INTO opt_outs (guild_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        "You have opted out: nothing new about you is recorded in this server. "
        "`/privacy delete-my-data` removes what was recorded before.",
    ),
    _MemberChoice(
        "opt-in",
        "Allow statistics about you again",
        "DELETE FROM opt_outs WHERE guild_id = $1 AND user_id = $2",
        "You are opted in again: your activity here is counted from now on.",
    ),
    _MemberChoice(
        "hide-from-leaderboards",
        "Keep counting your activity, but leave your name off the leaderboards",
        "INSERT INTO leaderboard_hidden (guild_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        "Your name is left off this server's leaderboards; your activity still counts in its "
        "totals. `/privacy show-on-leaderboards` undoes this.",
    ),
    _MemberChoice(
        "show-on-leaderboards",
        "Appear on the leaderboards again",
        "DELETE FROM leaderboard_hidden WHERE guild_id = $1 AND user_id = $2",
        "You appear on this server's leaderboards again.",
    ),
)


def _member_choice(
    rt: CommandRuntime, choice: _MemberChoice, done: Callable[[Context, str], Awaitable[Reply]]
) -> app_commands.Command[Any, Any, None]:
    async def record(interaction: discord.Interaction[Any]) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            async def work() -> Reply:
                await ctx.deps.pool.execute(choice.sql, ctx.guild_id, ctx.user_id)
                return await done(ctx, choice.answer)

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    return app_commands.Command(name=choice.name, description=choice.description, callback=record)


def build(rt: CommandRuntime) -> app_commands.Group:
    group = app_commands.Group(name="privacy", description="Your data in Herwa", guild_only=True)

    async def _done(ctx: Context, text: str) -> Reply:
        await rt.cache.drop_guild(ctx.guild_id)
        return Reply(text, ephemeral=True)

    for choice in _MEMBER_CHOICES:
        group.add_command(_member_choice(rt, choice, _done))

    @group.command(
        name="delete-my-data", description="Delete everything recorded about you in this server"
    )
    @app_commands.describe(confirm="set to True to confirm")
    async def delete_mine(interaction: discord.Interaction[Any], confirm: bool = False) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            _confirmed(confirm)

            async def work() -> Reply:
                async with ctx.deps.pool.acquire() as conn, conn.transaction():
                    # Opting out as well: otherwise new messages would be recorded again
                    # right after the deletion runs.
                    await conn.execute(
                        "INSERT INTO opt_outs (guild_id, user_id) VALUES ($1, $2)"
                        " ON CONFLICT DO NOTHING",
                        ctx.guild_id,
                        ctx.user_id,
                    )
                    await conn.execute(
                        "INSERT INTO deletion_requests (scope, guild_id, user_id, requested_by)"
                        " VALUES ('user', $1, $2, $2)",
                        ctx.guild_id,
                        ctx.user_id,
                    )
                return await _done(
                    ctx,
                    "Your data in this server will be deleted with the next "
                    "data run, and you are opted out. `/privacy opt-in` lets "
                    "you be counted again later.",
                )

            return {}, work

        await rt.run(interaction, SPEC, prepare)

    @group.command(
        name="delete-server-data",
        description="Admins: delete everything recorded about this server",
    )
    @app_commands.describe(confirm="set to True to confirm")
    async def delete_guild(interaction: discord.Interaction[Any], confirm: bool = False) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            _confirmed(confirm)

            async def work() -> Reply:
                async with ctx.deps.pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO deletion_requests (scope, guild_id, requested_by)"
                        " VALUES ('guild', $1, $2)",
                        ctx.guild_id,
                        ctx.user_id,
                    )
                    # Without it the next fresh connection's backfill would read the last
                    # day of history back in, and live capture would go on.
                    await conn.execute(
                        "INSERT INTO guild_tombstones (guild_id, deleted_by) VALUES ($1, $2)"
                        " ON CONFLICT (guild_id) DO UPDATE SET deleted_at = now(),"
                        " deleted_by = EXCLUDED.deleted_by, resumed_at = NULL, resumed_by = NULL",
                        ctx.guild_id,
                        ctx.user_id,
                    )
                ctx.deps.tombstones.deleted(ctx.guild_id)
                return await _done(
                    ctx,
                    "All of this server's recorded data will be deleted with the next data run, "
                    "and nothing more is recorded here until an admin runs "
                    "`/privacy server-opt-in`.",
                )

            return {}, work

        await rt.run(interaction, ADMIN_SPEC, prepare)

    @group.command(
        name="server-opt-in",
        description="Admins: record this server's activity again after its data was deleted",
    )
    async def resume_guild(interaction: discord.Interaction[Any]) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            async def work() -> Reply:
                resumed_at = await ctx.deps.pool.fetchval(
                    "UPDATE guild_tombstones SET resumed_at = now(), resumed_by = $2"
                    " WHERE guild_id = $1 AND resumed_at IS NULL RETURNING resumed_at",
                    ctx.guild_id,
                    ctx.user_id,
                )
                if resumed_at is None:
                    return Reply(
                        "This server's activity is being recorded; nothing to opt back into.",
                        ephemeral=True,
                    )
                ctx.deps.tombstones.resumed(ctx.guild_id, resumed_at)
                return await _done(
                    ctx,
                    "This server's activity is recorded again from now on. "
                    "Nothing from before this moment is read back.",
                )

            return {}, work

        await rt.run(interaction, ADMIN_SPEC, prepare)

    return group
