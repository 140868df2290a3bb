"""Slash commands: sync, INTERACTION_CREATE, deferred responses with a PNG, follow-ups."""

from __future__ import annotations

import asyncio
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


async def test_random_invocations_follow_the_registered_signatures(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    """Discord builds an interaction from the registered command: a group is invoked through
    one of its subcommands, options carry their declared types within their declared bounds,
    and users and channels come with their resolved objects. discord.py rejects anything else
    (CommandSignatureMismatch, a failed transform) and never answers."""
    sim = await make_sim(guilds=2, seed=37)
    client = make_client()
    tree = app_commands.CommandTree(client)
    failures: list[BaseException] = []
    seen: list[tuple[str, dict[str, object]]] = []

    async def on_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        failures.append(error)

    tree.on_error = on_error  # type: ignore[method-assign]
    group = app_commands.Group(name="config", description="settings")

    @group.command(name="hour", description="an hour")
    async def hour(interaction: discord.Interaction, hour: app_commands.Range[int, 0, 23]) -> None:
        seen.append(("config hour", {"hour": hour}))
        await interaction.response.send_message(f"hour {hour}", ephemeral=True)

    @group.command(name="where", description="a channel and a member")
    async def where(
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        member: discord.Member | None = None,
        flag: bool = False,
    ) -> None:
        seen.append(("config where", {"channel": channel.id, "member": member, "flag": flag}))
        await interaction.response.send_message("ok", ephemeral=True)

    tree.add_command(group)

    @tree.command(name="pick", description="a choice")
    @app_commands.choices(kind=[app_commands.Choice(name=n, value=n) for n in ("a", "b", "c")])
    async def pick(
        interaction: discord.Interaction,
        kind: app_commands.Choice[str],
        label: app_commands.Range[str, 2, 5] | None = None,
    ) -> None:
        seen.append(("pick", {"kind": kind.value, "label": label}))
        await interaction.response.send_message(kind.value)

    bot = Bot(client)
    bots.append(bot)
    await bot.start(sim.config.token)
    await tree.sync()
    before = set(sim.interactions.by_id)
    assert set(sim.step(90, family="command")) == {"command"}
    records = [r for i, r in sim.interactions.by_id.items() if i not in before]
    assert len(records) == 90
    await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in records)), 30)
    assert not failures
    names = {name for name, _ in seen}
    assert names == {"config hour", "config where", "pick"}
    for name, values in seen:
        if name == "config hour":
            assert 0 <= int(values["hour"]) <= 23  # type: ignore[call-overload]
        if name == "pick":
            assert values["kind"] in ("a", "b", "c")
            assert values["label"] is None or 2 <= len(str(values["label"])) <= 5
    # Random traffic comes from ordinary members: no Manage Server.
    raw = bot.raw.of("INTERACTION_CREATE")[-90:]
    assert all(not int(r["member"]["permissions"]) & (1 << 5) for r in raw)
