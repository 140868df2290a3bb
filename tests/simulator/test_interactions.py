"""Slash commands: sync, INTERACTION_CREATE, deferred responses with a PNG, follow-ups."""

from __future__ import annotations

import io
import zlib

import aiohttp
import discord
from discord import app_commands

from tests.simulator.conftest import Bot, SimFactory, make_client


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def test_interaction_round_trip_with_file(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(guilds=2, seed=31)
    guild_id = next(iter(sim.world.guilds))
    client = make_client()
    tree = app_commands.CommandTree(client)
    png = tiny_png()
    seen: list[discord.Interaction] = []

    @tree.command(name="activity", description="messages per day")
    @app_commands.describe(days="how far back")
    async def activity(interaction: discord.Interaction, days: int = 7) -> None:
        seen.append(interaction)
        await interaction.response.defer(thinking=True)
        embed = discord.Embed(title=f"Activity, last {days} days", description="42 messages")
        embed.set_image(url="attachment://chart.png")
        await interaction.edit_original_response(
            embed=embed, attachments=[discord.File(io.BytesIO(png), filename="chart.png")]
        )
        await interaction.followup.send("csv coming soon", ephemeral=True)

    @tree.command(name="ping", description="latency")
    async def ping(interaction: discord.Interaction) -> None:
        seen.append(interaction)
        await interaction.response.send_message("pong")

    bot = Bot(client)
    bots.append(bot)
    await bot.start(sim.config.token)
    synced = await tree.sync()
    assert {c.name for c in synced} == {"activity", "ping"}
    assert all(c.id for c in synced)
    assert sorted(c["name"] for c in sim.app.global_commands) == ["activity", "ping"]

    pong = await sim.invoke_command(guild_id, "ping")
    assert pong["response_type"] == 4
    assert pong["original"]["content"] == "pong"

    result = await sim.invoke_command(
        guild_id, "activity", [{"name": "days", "type": 4, "value": 30}], include_bytes=True
    )
    assert result["deferred"]
    assert result["complete"]
    original = result["original"]
    assert original["embeds"][0]["title"] == "Activity, last 30 days"
    (att,) = original["attachments"]
    assert att["filename"] == "chart.png"
    stored = sim.interactions.files[int(att["id"])]
    assert stored.data == png
    (follow,) = result["followups"]
    assert follow["content"] == "csv coming soon"
    assert follow["flags"] & 64

    # The interaction the bot saw carried the right ids.
    inter = seen[-1]
    assert inter.guild_id == guild_id
    assert inter.user.id == sim.world.guilds[guild_id].owner_id
    assert inter.command is not None
    assert inter.command.name == "activity"
    assert sim.ledger.guilds[guild_id].commands == {"ping": 1, "activity": 1}
    raw = bot.raw.of("INTERACTION_CREATE")
    assert [r["data"]["name"] for r in raw] == ["ping", "activity"]

    # The same through the control API, as a test in another process would drive it.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sim.url}/_sim/interactions", json={"guild_id": str(guild_id), "name": "ping"}
        ) as r:
            assert r.status == 200
            assert (await r.json())["original"]["content"] == "pong"
        async with http.get(att["url"]) as r:
            assert await r.read() == png
