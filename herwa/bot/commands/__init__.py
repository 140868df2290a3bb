"""Herwa's slash commands (``herwa.bot.commands`` lives in ``bot/commands/``).

One command per platform feature so tiers can gate each. The names sold are
``herwa/platform.yaml``'s ``commands:``; the names served are those :func:`install` registers,
and each handler's :class:`~._runtime.CommandSpec` names the command the gate charges
(tests/commands/test_registry.py holds the three equal). Every invocation passes the same gate
(per-user rate limit, Manage Server for admin commands, the guild's entitlement, the monthly
query quota) in :mod:`._runtime`.

Wiring, in the bot's ``setup_hook``::

    install(self.tree, CommandDeps(pool, redis, readonly_clickhouse, settings.commands(),
                                   redis_prefix=settings.redis().key_prefix))
    await self.tree.sync()
"""

from __future__ import annotations

from typing import Any

from discord import app_commands

from herwa.bot.commands import (
    channels,
    export,
    growth,
    heatmap,
    help,
    leaderboards,
    me,
    online,
    overview,
    privacy,
    reactions,
    retention,
    settings,
    usage,
)
from herwa.bot.commands._charts import (
    GROWTH_SIZE,
    HEATMAP_SIZE,
    JOINS_COLOUR,
    LEAVES_COLOUR,
    MAX_DATE_TICKS,
    MEMBERS_COLOUR,
    RETENTION_SIZE,
    WEEKDAYS,
    count_labels,
    date_ticks,
    growth_png,
    heatmap_png,
    nice_ticks,
    png_size,
    retention_png,
)
from herwa.bot.commands._gate import CommandOutcome, Gate, quota_month
from herwa.bot.commands._options import (
    OptionError,
    bounded_int,
    date_range,
    parse_channel_id,
    parse_channel_ids,
    parse_timezone,
)
from herwa.bot.commands._runtime import CommandDeps, CommandRuntime, CommandSpec

__all__ = [
    "GROWTH_SIZE",
    "HEATMAP_SIZE",
    "JOINS_COLOUR",
    "LEAVES_COLOUR",
    "MAX_DATE_TICKS",
    "MEMBERS_COLOUR",
    "RETENTION_SIZE",
    "WEEKDAYS",
    "CommandDeps",
    "CommandOutcome",
    "CommandRuntime",
    "CommandSpec",
    "Gate",
    "OptionError",
    "bounded_int",
    "count_labels",
    "date_range",
    "date_ticks",
    "growth_png",
    "heatmap_png",
    "install",
    "nice_ticks",
    "parse_channel_id",
    "parse_channel_ids",
    "parse_timezone",
    "png_size",
    "quota_month",
    "retention_png",
]


def install(tree: app_commands.CommandTree[Any], deps: CommandDeps) -> CommandRuntime:
    """Add every command to ``tree`` (global commands); sync the tree afterwards."""
    rt = CommandRuntime(deps)
    commands: list[app_commands.Command[Any, Any, None] | app_commands.Group] = [
        overview.build(rt),
        heatmap.build(rt),
        retention.build(rt),
        growth.build(rt),
        online.build(rt),
        *leaderboards.build(rt),
        channels.build(rt),
        reactions.build(rt),
        me.build(rt),
        usage.build(rt),
        privacy.build(rt),
        export.build(rt),
        settings.build(rt),
    ]
    commands.append(help.build(rt, commands))
    for command in commands:
        tree.add_command(command)
    return rt
