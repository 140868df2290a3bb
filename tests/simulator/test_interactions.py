"""Slash commands: sync, INTERACTION_CREATE, deferred responses with a PNG, follow-ups."""

from __future__ import annotations

import asyncio
import io
import zlib

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.app_commands import Choice

from herwa.simulator import check_registration
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


async def test_a_reply_after_the_invoker_left_still_names_them(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    """Discord answers an interaction whose member has left the server since: the reply's
    interaction_metadata still names them."""
    sim = await make_sim(guilds=1, seed=41)
    guild_id = next(iter(sim.world.guilds))
    guild = sim.world.guilds[guild_id]
    user_id = next(u for u in guild.members if u != guild.owner_id)
    client = make_client()
    tree = app_commands.CommandTree(client)
    invoked, may_answer = asyncio.Event(), asyncio.Event()
    replies: list[discord.InteractionMessage] = []

    @tree.command(name="slow", description="answers late")
    async def slow(interaction: discord.Interaction) -> None:
        invoked.set()
        await may_answer.wait()  # within the 3 s Discord allows before the first response
        await interaction.response.send_message("done")
        replies.append(await interaction.original_response())

    bot = Bot(client)
    bots.append(bot)
    await bot.start(sim.config.token)
    await tree.sync()
    call = asyncio.create_task(sim.invoke_command(guild_id, "slow", user_id=user_id))
    await asyncio.wait_for(invoked.wait(), 10)
    sim.activity.member_leave(guild_id, user_id, at_ms=sim.now_ms())
    assert user_id not in guild.members
    may_answer.set()
    result = await call
    assert result["complete"]
    assert result["original"]["content"] == "done"
    (reply,) = replies
    assert reply.interaction_metadata is not None
    assert reply.interaction_metadata.user.id == user_id


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


async def test_autocomplete_answers_are_validated_like_discord(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    """APPLICATION_COMMAND_AUTOCOMPLETE (type 4) with the focused option, answered by callback
    type 8; the simulator refuses with 400 what Discord refuses: more than 25 choices, a name
    outside 1-100 characters, a value of another type than the option's, a message instead."""
    sim = await make_sim(guilds=1, seed=32)
    guild_id = next(iter(sim.world.guilds))
    client = make_client()
    tree = app_commands.CommandTree(client)
    asked: list[object] = []

    async def words(interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        asked.append(current)
        if current == "many":
            return [Choice(name=f"w{i}", value=f"w{i}") for i in range(26)]
        if current == "long":
            return [Choice(name="x" * 101, value="x")]
        if current == "empty":
            return [Choice(name="", value="x")]
        if current == "number":
            return [Choice(name="one", value=1)]  # type: ignore[arg-type]
        if current == "message":
            await interaction.response.send_message("not a list of choices")
            return []
        return [Choice(name=f"{current}{i}", value=f"{current}{i}") for i in range(25)]

    async def counts(interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return [Choice(name="ten", value="10")]  # a string for an integer option

    @tree.command(name="pick", description="pick a word")
    @app_commands.autocomplete(word=words, count=counts)
    async def pick(interaction: discord.Interaction, word: str, count: int = 1) -> None:
        await interaction.response.send_message(f"{word} x{count}")

    bot = Bot(client)
    bots.append(bot)
    await bot.start(sim.config.token)
    await tree.sync()
    (registered,) = sim.app.global_commands
    assert [o.get("autocomplete") for o in registered["options"]] == [True, True]

    def typing(value: object, name: str = "word") -> list[dict[str, object]]:
        kind = 3 if name == "word" else 4
        return [{"name": name, "type": kind, "value": value, "focused": True}]

    ok = await sim.autocomplete(guild_id, "pick", typing("ab"))
    assert ok["response_type"] == 8
    assert ok["invalid"] is None
    assert ok["choices"] == [{"name": f"ab{i}", "value": f"ab{i}"} for i in range(25)]
    assert asked == ["ab"]
    refused = {
        "many": "must be 25 or fewer",
        "long": "name: must be between 1 and 100",
        "empty": "name: must be between 1 and 100",
        "number": "value: a string",
        "message": "4 is not a response to an autocomplete",
    }
    for typed, why in refused.items():
        result = await sim.autocomplete(guild_id, "pick", typing(typed))
        assert why in str(result["invalid"]), (typed, result)
        assert result["choices"] is None
    wrong_type = await sim.autocomplete(guild_id, "pick", typing("1", "count"))
    assert "value: an integer" in str(wrong_type["invalid"])

    # Autocomplete is no invocation: the ledger counts none of it; the command still runs.
    assert sum(sim.ledger.guilds[guild_id].commands.values()) == 0
    done = await sim.invoke_command(guild_id, "pick", [{"name": "word", "type": 3, "value": "ab3"}])
    assert done["original"]["content"] == "ab3 x1"

    # What Discord never sends is refused before it reaches the bot.
    with pytest.raises(ValueError, match="exactly one focused"):
        await sim.autocomplete(guild_id, "pick", [{"name": "word", "type": 3, "value": "a"}])
    with pytest.raises(ValueError, match="not registered"):
        await sim.autocomplete(guild_id, "nothing", typing("a"))


def test_registration_refuses_autocomplete_beside_choices_or_on_other_types() -> None:
    assert check_registration({"name": "a", "options": [{"name": "x", "type": 3}]}) is None
    both = {"type": 3, "name": "x", "autocomplete": True, "choices": [{"name": "a", "value": "a"}]}
    assert "cannot be set with choices" in str(check_registration({"name": "a", "options": [both]}))
    user = {"type": 6, "name": "who", "autocomplete": True}
    nested = {"name": "a", "options": [{"type": 1, "name": "sub", "options": [user]}]}
    assert "strings and numbers" in str(check_registration(nested))
