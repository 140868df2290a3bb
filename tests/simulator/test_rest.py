"""REST: message history for backfill (pagination, Discord's ordering, rate limits)."""

from __future__ import annotations

import aiohttp
import discord

from herwa.simulator import Simulator
from tests.simulator.conftest import Bot, SimFactory, make_client


def _channel_with_most(sim: Simulator) -> int:
    counts: dict[int, int] = {}
    for r in sim.ledger.messages.values():
        counts[r.channel_id] = counts.get(r.channel_id, 0) + 1
    return max(counts, key=lambda c: counts[c])


async def test_history_pagination_matches_discord(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=1, seed=21)
    sim.create_history(days=21, messages_per_day=40)
    cid = _channel_with_most(sim)
    expected = sorted(r.id for r in sim.ledger.messages.values() if r.channel_id == cid)
    assert len(expected) > 150
    headers = {"Authorization": f"Bot {sim.config.token}"}
    url = f"{sim.api_base}/channels/{cid}/messages"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(url, params={"limit": "100"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json"
            assert "X-RateLimit-Remaining" in r.headers
            newest = [int(m["id"]) for m in await r.json()]
        assert newest == expected[::-1][:100]  # newest first
        async with http.get(url, params={"limit": "100", "before": str(newest[-1])}) as r:
            assert [int(m["id"]) for m in await r.json()] == expected[::-1][100:200]
        # after: the messages right after the id, still newest first.
        async with http.get(url, params={"limit": "10", "after": str(expected[4])}) as r:
            assert [int(m["id"]) for m in await r.json()] == expected[5:15][::-1]
        async with http.get(url, params={"limit": "101"}) as r:
            assert r.status == 400
        async with http.get(url, headers={"Authorization": "Bot wrong"}) as r:
            assert r.status == 401
    # Historical ids carry historical timestamps (created_at from the snowflake).
    first = sim.ledger.messages[expected[0]]
    assert first.historical
    assert discord.utils.snowflake_time(first.id).timestamp() * 1000 == first.created_ms


async def test_discord_py_backfills_after_an_id(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(guilds=1, seed=22, history_rate=(5, 1.0))
    sim.create_history(days=14, messages_per_day=60)
    cid = _channel_with_most(sim)
    expected = sorted(r.id for r in sim.ledger.messages.values() if r.channel_id == cid)
    bot = Bot(make_client())
    bots.append(bot)
    await bot.start(sim.config.token)
    channel = bot.client.get_channel(cid)
    assert isinstance(channel, discord.TextChannel)
    cut = expected[len(expected) // 3]
    got = [
        m.id
        async for m in channel.history(limit=None, after=discord.Object(cut), oldest_first=True)
    ]
    assert got == [m for m in expected if m > cut]


async def test_history_rate_limit_answers_429(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=1, seed=23, history_rate=(2, 5.0))
    cid = next(iter(sim.world.guilds.values())).text_channels()[0].id
    headers = {"Authorization": f"Bot {sim.config.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        url = f"{sim.api_base}/channels/{cid}/messages"
        statuses = []
        for _ in range(3):
            async with http.get(url) as r:
                statuses.append(r.status)
                last = r
                body = await r.json()
        assert statuses == [200, 200, 429]
        assert body["retry_after"] > 0
        assert body["global"] is False
        assert last.headers["X-RateLimit-Remaining"] == "0"
        assert float(last.headers["Retry-After"]) > 0


async def test_gateway_bot_and_identity(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=2, recommended_shards=3)
    headers = {"Authorization": f"Bot {sim.config.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{sim.api_base}/gateway/bot") as r:
            gw = await r.json()
        async with http.get(f"{sim.api_base}/oauth2/applications/@me") as r:
            app = await r.json()
    assert gw["url"] == sim.ws_url
    assert gw["shards"] == 3
    assert gw["session_start_limit"]["max_concurrency"] == 1
    assert app["id"] == str(sim.app.application_id)
