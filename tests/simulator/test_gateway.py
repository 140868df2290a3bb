"""A plain discord.py Client against the simulator's gateway: events, resume, refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping

import discord
import pytest

from herwa.simulator import GatewayConfig, Member
from tests.simulator.conftest import Bot, SimFactory, intents, make_client, now_ms


def _human(sim_guild_members: Mapping[int, Member], bot_id: int) -> int:
    for uid, m in sim_guild_members.items():
        if uid != bot_id and not m.user.bot:
            return uid
    raise AssertionError("no human member")


async def test_every_event_type_arrives_with_correct_ids(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    sim = await make_sim(guilds=2, seed=3)
    bot = Bot(make_client())
    bots.append(bot)
    await bot.start(sim.config.token)

    created = bot.raw.of("GUILD_CREATE")
    assert {g["id"] for g in created} == {str(g) for g in sim.world.guilds}
    ready = bot.raw.of("READY")[0]
    assert ready["resume_gateway_url"] == sim.ws_url
    assert bot.client.user is not None
    assert bot.client.user.id == sim.app.bot_user.id

    g = next(iter(sim.world.guilds.values()))
    text = g.text_channels()[0]
    voice = next(c for c in g.channels.values() if c.type == 2)
    stage = next(c for c in g.channels.values() if c.type == 13)
    uid = _human(g.members, sim.app.bot_user.id)
    a = sim.activity
    t = now_ms()
    ids = {
        k: a.post_message(g.id, text.id, uid, k, at_ms=t)
        for k in ("text", "attachment", "embed", "sticker", "reply")
    }
    thread_id = a.create_thread(g.id, text.id, uid, at_ms=t)
    in_thread = a.post_message(g.id, thread_id, uid, "text", at_ms=t)
    a.edit_message(ids["text"], at_ms=t)
    a.delete_message(ids["embed"])
    a.voice_join(g.id, uid, voice.id, at_ms=t)
    a.voice_move(g.id, uid, stage.id, at_ms=t)
    a.voice_mute(g.id, uid, True, at_ms=t)
    a.voice_leave(g.id, uid, at_ms=t + 61_500)
    joined = a.member_join(g.id, at_ms=t)
    a.member_leave(g.id, joined, at_ms=t)

    await bot.raw.wait_for(lambda: len(bot.raw.of("GUILD_MEMBER_REMOVE")) == 1)

    creates = {int(m["id"]): m for m in bot.raw.of("MESSAGE_CREATE")}
    assert set(creates) == {*ids.values(), in_thread}
    assert creates[ids["attachment"]]["attachments"][0]["content_type"] == "image/png"
    assert creates[ids["embed"]]["embeds"][0]["type"] == "link"
    assert creates[ids["sticker"]]["sticker_items"]
    assert creates[ids["reply"]]["type"] == 19
    assert creates[ids["reply"]]["message_reference"]["channel_id"] == str(text.id)
    assert [int(m["id"]) for m in bot.raw.of("MESSAGE_UPDATE")] == [ids["text"]]
    assert [int(m["id"]) for m in bot.raw.of("MESSAGE_DELETE")] == [ids["embed"]]
    (thread,) = bot.raw.of("THREAD_CREATE")
    assert int(thread["id"]) == thread_id
    assert thread["parent_id"] == str(text.id)
    assert thread["type"] == 11

    states = bot.raw.of("VOICE_STATE_UPDATE")
    assert [s["channel_id"] for s in states] == [str(voice.id), str(stage.id), str(stage.id), None]
    assert [s["self_mute"] for s in states] == [False, False, True, True]
    assert all(s["user_id"] == str(uid) and s["guild_id"] == str(g.id) for s in states)
    assert sim.ledger.voice_totals(g.id, user_id=uid) == (1, 61.5)

    (add,) = bot.raw.of("GUILD_MEMBER_ADD")
    (rem,) = bot.raw.of("GUILD_MEMBER_REMOVE")
    assert add["user"]["id"] == rem["user"]["id"] == str(joined)
    assert add["guild_id"] == rem["guild_id"] == str(g.id)

    # discord.py builds the model objects from these payloads: ids, times, channel types.
    await asyncio.sleep(0.1)
    by_id = {m.id: m for m in bot.messages}
    assert set(by_id) == set(creates)
    for mid, m in by_id.items():
        rec = sim.ledger.messages[mid]
        assert m.created_at == dt.datetime.fromtimestamp(rec.created_ms / 1000, tz=dt.UTC)
        assert m.author.id == rec.author_id
        assert m.guild is not None
        assert m.guild.id == g.id
    assert isinstance(by_id[in_thread].channel, discord.Thread)
    assert by_id[ids["reply"]].type is discord.MessageType.reply
    assert by_id[ids["sticker"]].stickers
    assert by_id[ids["attachment"]].attachments
    guild = bot.client.get_guild(g.id)
    assert guild is not None
    assert guild.member_count == len(g.members)


async def test_without_message_content_payloads_are_stripped(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    sim = await make_sim(guilds=1, seed=4)
    bot = Bot(make_client(intents=intents(members=False, content=False)))
    bots.append(bot)
    await bot.start(sim.config.token)
    g = next(iter(sim.world.guilds.values()))
    text = g.text_channels()[0]
    uid = _human(g.members, sim.app.bot_user.id)
    a = sim.activity
    t = now_ms()
    kinds = ("text", "attachment", "embed", "sticker", "reply")
    ids = {k: a.post_message(g.id, text.id, uid, k, at_ms=t) for k in kinds}
    a.member_join(g.id, at_ms=t)
    sentinel = a.post_message(g.id, text.id, uid, "text", at_ms=t)
    await bot.raw.wait_for(
        lambda: any(m["id"] == str(sentinel) for m in bot.raw.of("MESSAGE_CREATE"))
    )
    got = {int(m["id"]): m for m in bot.raw.of("MESSAGE_CREATE")}
    for mid in ids.values():
        m = got[mid]
        assert m["content"] == ""
        assert m["embeds"] == []
        assert m["attachments"] == []
    # What remains lets the bot classify some kinds without the privileged intent.
    assert got[ids["sticker"]]["sticker_items"]
    assert got[ids["reply"]]["type"] == 19
    assert got[ids["reply"]]["message_reference"]
    assert bot.raw.of("GUILD_MEMBER_ADD") == []  # no GUILD_MEMBERS intent, no member events
    assert sim.ledger.guilds[g.id].joins == 1


async def test_resume_after_drop_replays_missed_events(
    make_sim: SimFactory, bots: list[Bot]
) -> None:
    sim = await make_sim(guilds=2, seed=5)
    bot = Bot(make_client())
    bots.append(bot)
    resumed = asyncio.Event()

    @bot.client.event
    async def on_resumed() -> None:
        resumed.set()

    await bot.start(sim.config.token)
    (session,) = sim.sessions()
    sim.step(20, family="message")
    await asyncio.sleep(0.2)
    before = len(bot.raw.of("MESSAGE_CREATE"))
    assert before == 20

    await sim.inject_fault("drop", 0)
    # Emitted while the shard is down: sequenced into the session and buffered.
    sim.step(30, family="message")
    await asyncio.wait_for(resumed.wait(), 15)
    sim.step(10, family="message")
    await bot.raw.wait_for(lambda: len(bot.raw.of("MESSAGE_CREATE")) >= 60)
    await asyncio.sleep(0.2)

    got = [int(m["id"]) for m in bot.raw.of("MESSAGE_CREATE")]
    sent = [mid for mid, r in sim.ledger.messages.items() if not r.historical]
    assert len(got) == len(set(got)) == 60  # none doubled
    assert set(got) == set(sent)  # none lost
    assert [s.id for s in sim.sessions()] == [session.id]  # resumed, not re-identified
    assert session.replayed >= 30
    offline = [
        d
        for d in sim.ledger.deliveries_for(session_id=session.id)
        if d.event == "MESSAGE_CREATE" and not d.connected
    ]
    assert len(offline) == 30
    seqs = [e["s"] for e in bot.raw.events if e.get("op") == 0]
    assert seqs == sorted(seqs)  # replay keeps the order


async def test_reconnect_and_invalidate(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(guilds=1, seed=6)
    bot = Bot(make_client())
    bots.append(bot)
    await bot.start(sim.config.token)
    (first,) = sim.sessions()

    resumed = asyncio.Event()

    @bot.client.event
    async def on_resumed() -> None:
        resumed.set()

    await sim.inject_fault("reconnect", 0)
    await asyncio.wait_for(resumed.wait(), 10)
    assert [s.id for s in sim.sessions()] == [first.id]

    # INVALID_SESSION: the session is gone, discord.py identifies again (new session id).
    await sim.inject_fault("invalidate", 0)
    await bot.raw.wait_for(lambda: len(bot.raw.of("READY")) == 2, timeout=15)
    (second,) = sim.sessions()
    assert second.id != first.id
    sim.step(5, family="message")
    await bot.raw.wait_for(lambda: len(bot.raw.of("MESSAGE_CREATE")) == 5)


async def test_bad_token_is_refused(make_sim: SimFactory) -> None:
    await make_sim(guilds=1)
    client = make_client()
    with pytest.raises(discord.LoginFailure):
        await asyncio.wait_for(client.start("not-the-token"), 10)
    await client.close()


async def test_revoked_token_closes_with_4004(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(guilds=1)
    bot = Bot(make_client())
    bots.append(bot)
    await bot.start(sim.config.token)
    sim.revoke_token()
    await sim.inject_fault("close", 0)  # the client resumes with a token that is now invalid
    assert bot.task is not None
    with pytest.raises(discord.ConnectionClosed) as exc:
        await asyncio.wait_for(bot.task, 15)
    assert exc.value.code == 4004


async def test_disallowed_privileged_intent_closes_with_4014(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=1, privileged_intents=0)
    client = make_client(intents=intents(members=False, content=True))
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(client.start(sim.config.token), 10)
    await client.close()


async def test_too_many_guilds_per_shard_closes_with_4011(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=3, gateway=GatewayConfig(max_guilds_per_shard=2))
    client = make_client()
    with pytest.raises(discord.ConnectionClosed) as exc:
        await asyncio.wait_for(client.start(sim.config.token), 10)
    assert exc.value.code == 4011
    await client.close()
