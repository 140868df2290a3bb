"""One plain discord.py Client for one shard, in its own process (run by test_sharding).

Prints one JSON line per event it cares about, then exits when stdin closes.
argv: api_base gateway_url token shard_id shard_count
"""

from __future__ import annotations

import asyncio
import sys

import discord
import orjson

from herwa.simulator import point_discord_at


def emit(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def main() -> None:
    api_base, gateway_url, token, shard_id, shard_count = sys.argv[1:6]
    point_discord_at(api_base, gateway_url)
    intents = discord.Intents.default()
    intents.members = True
    intents.message_content = True
    client = discord.Client(
        intents=intents,
        shard_id=int(shard_id),
        shard_count=int(shard_count),
        chunk_guilds_at_startup=False,
        guild_ready_timeout=0.2,
    )

    @client.event
    async def on_ready() -> None:
        emit({"ready": [g.id for g in client.guilds]})

    @client.event
    async def on_message(message: discord.Message) -> None:
        emit({"message": message.id, "guild": message.guild.id if message.guild else None})

    task = asyncio.create_task(client.start(token))
    loop = asyncio.get_running_loop()
    # The parent closes stdin to stop us.
    await loop.run_in_executor(None, sys.stdin.read)
    await client.close()
    await task


if __name__ == "__main__":
    asyncio.run(main())
