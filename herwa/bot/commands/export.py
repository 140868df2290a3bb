"""/export — admins: the server's daily statistics as a CSV attachment.

``herwa.analytics`` has no per-day message series yet, so :data:`_DAILY` is the one query this
package writes itself (reported to the lead; move it into analytics when it lands there). The
guild id is bound as a parameter like everywhere else, and it reads the same FINAL rollups.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from herwa import analytics
from herwa.bot.commands._common import DAYS_HELP, END_HELP, Days, resolve_range
from herwa.bot.commands._options import DateRange
from herwa.bot.commands._reply import Attachment, Reply
from herwa.bot.commands._runtime import Context, Runtime, Spec, Work

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

SPEC = Spec("export", admin=True, ephemeral=True)
COLUMNS = ("day", "messages", "active_members", "voice_minutes", "joins", "leaves", "member_count")

# Message figures per local day from the hourly rollup (exact in whole-hour zones); voice time
# counted on the local day the session started.
_DAILY = """
    SELECT day, sum(m), sum(a), sum(v) FROM (
        SELECT toDate(toTimeZone(hour, {tz:String})) AS day, sum(messages) AS m,
               uniqExactIf(author_id, messages > 0) AS a, 0 AS v
        FROM message_activity_hourly FINAL
        WHERE guild_id = {guild_id:UInt64} AND NOT is_bot
          AND hour >= toDateTime({since:UInt32}, 'UTC') AND hour < toDateTime({until:UInt32}, 'UTC')
        GROUP BY day
        UNION ALL
        SELECT toDate(toTimeZone(joined_at, {tz:String})) AS day, 0, 0,
               sum(duration_seconds) AS v
        FROM voice_sessions FINAL
        WHERE guild_id = {guild_id:UInt64} AND NOT is_bot
          AND joined_at >= toDateTime64({since:UInt32}, 3, 'UTC')
          AND joined_at < toDateTime64({until:UInt32}, 3, 'UTC')
        GROUP BY day
    ) GROUP BY day
"""


async def daily_rows(client: AsyncClient, guild_id: int, span: DateRange) -> list[list[Any]]:
    params = {
        "guild_id": guild_id,
        "tz": span.tz,
        "since": int(span.start_utc.timestamp()),
        "until": int(span.end_utc.timestamp()),
    }
    result = await client.query(_DAILY, parameters=params)
    activity: dict[date, tuple[int, int, float]] = {
        d: (int(m), int(a), float(v)) for d, m, a, v in result.result_rows
    }
    points = await analytics.growth(client, guild_id, span.tz, span.start_utc, span.end_utc)
    out = []
    for p in points:
        m, a, v = activity.get(p.day, (0, 0, 0.0))
        out.append(
            [
                p.day.isoformat(),
                m,
                a,
                round(v / 60),
                p.joins,
                p.leaves,
                "" if p.member_count is None else p.member_count,
            ]
        )
    return out


def build(rt: Runtime) -> app_commands.Command[Any, Any, None]:
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
