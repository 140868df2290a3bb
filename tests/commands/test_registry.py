"""Every gated command the platform sells exists in the bot, under the same name, and back."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import discord
from discord import app_commands
from redis.asyncio import Redis

from herwa import platform
from herwa.bot import commands
from herwa.bot.commands import CommandDeps, CommandSpec, install


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
    # Both sides derived: adding a command is its module, its install() line and its
    # platform.yaml entry, and no list kept by hand.
    assert registered == sold


def test_every_handler_is_gated_under_a_name_the_platform_sells() -> None:
    # The gate looks a CommandSpec's command up in the platform's command -> feature map: a name it
    # does not sell would refuse every invocation.
    specs = {
        value.command
        for module in vars(commands).values()
        if isinstance(module, ModuleType)
        for value in vars(module).values()
        if isinstance(value, CommandSpec)
    }
    assert specs == set(platform.load().commands)
