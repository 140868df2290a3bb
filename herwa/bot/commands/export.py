"""/export — admins: the server's daily statistics as a CSV attachment, each day's figures
those of herwa.analytics (the daily activity and growth series the dashboards draw too)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import DAYS_HELP, END_HELP, Days, resolve_range
from herwa.bot.commands._options import DateRange
from herwa.bot.commands._reply import Attachment, Reply
from herwa.bot.commands._runtime import CommandRuntime, CommandSpec, Context, Work

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

SPEC = CommandSpec("export", admin=True, ephemeral=True)
COLUMNS = ("day", "messages", "active_members", "voice_minutes", "joins", "leaves", "member_count")


async def daily_rows(client: AsyncClient, guild_id: int, span: DateRange) -> list[list[Any]]:
    days = await analytics.daily(client, guild_id, span.tz, span.start_utc, span.end_utc)
    points = await analytics.growth(client, guild_id, span.tz, span.start_utc, span.end_utc)
    return [
        [
            d.day.isoformat(),
            d.messages,
            d.active_members,
            round(d.voice_seconds / 60),
            p.joins,
            p.leaves,
            "" if p.member_count is None else p.member_count,
        ]
        for d, p in zip(days, points, strict=True)
    ]


def build(rt: CommandRuntime) -> app_commands.Command[Any, Any, None]:
    @app_commands.command(name="export", description="Admins: daily statistics as CSV")
    @app_commands.describe(days=DAYS_HELP, end=END_HELP)
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def export(
        interaction: discord.Interaction[Any], days: Days = 30, end: str | None = None
    ) -> None:
        async def prepare(ctx: Context) -> tuple[dict[str, Any], Work]:
            span = await resolve_range(ctx, days, end)

            async def work() -> Reply:
                rows = await daily_rows(ctx.deps.clickhouse, ctx.guild_id, span)
                out = io.StringIO()
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(COLUMNS)
                writer.writerows(rows)
                name = f"herwa-{ctx.guild_id}-{span.first.isoformat()}-{span.last.isoformat()}.csv"
                return Reply(
                    f"Daily statistics, {span.label()}: {len(rows)} days.",
                    files=(Attachment(name, out.getvalue().encode(), "daily statistics CSV"),),
                    ephemeral=True,
                )

            return {"first": span.first, "last": span.last, "tz": span.tz}, work

        await rt.run(interaction, SPEC, prepare)

    return export
