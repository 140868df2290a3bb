"""Every gated command the platform sells exists in the bot, under the same name, and back."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from redis.asyncio import Redis

from herwa import platform
from herwa.bot.commands import COMMAND_NAMES, CommandDeps, install


def test_the_bot_registers_exactly_the_platforms_commands() -> None:
    tree: app_commands.CommandTree[Any] = app_commands.CommandTree(
        discord.Client(intents=discord.Intents.none())
    )
    # Building the commands opens no connection: an unconnected Redis client is enough, and
    # the pool and ClickHouse client are never touched.
    deps = CommandDeps(pool=None, redis=Redis(), clickhouse=None)  # type: ignore[arg-type]
    install(tree, deps)
    registered = {command.name for command in tree.get_commands()}
    sold = set(platform.load().commands)
    assert registered == sold == set(COMMAND_NAMES)
