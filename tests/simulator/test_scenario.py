"""The scenario engine and its ledger: determinism, realism, control API, CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import zoneinfo

import aiohttp

from herwa.simulator import DISCORD_EPOCH_MS, Simulator, SimulatorConfig
from tests.simulator.conftest import Bot, SimFactory, make_client, now_ms

START = 1_717_200_000_000  # 2024-06-01T00:00:00Z


def _run(seed: int) -> dict[str, object]:
    sim = Simulator(SimulatorConfig(seed=seed, guilds=4))
    sim.run_steps(3000, start_ms=START, step_ms=60_000)
    summary = sim.ledger.summary()
    summary.pop("deliveries")
    return {
        "summary": summary,
        "messages": sim.ledger.message_rows(),
        "voice": [(v.user_id, v.join_ms, v.leave_ms) for v in sim.ledger.voice_sessions],
    }


def test_same_seed_same_ledger_and_different_seed_differs() -> None:
    a, b, c = _run(7), _run(7), _run(8)
    assert a == b
    assert a["summary"] != c["summary"]


def test_scenario_shape_is_realistic() -> None:
    sim = Simulator(SimulatorConfig(seed=3, guilds=4))
    sim.run_steps(20_000, start_ms=START, step_ms=30_000)  # about a week
    led = sim.ledger
    kinds: dict[str, int] = {}
    hours = [0] * 24
    for r in led.messages.values():
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
        tz = zoneinfo.ZoneInfo(sim.world.guilds[r.guild_id].timezone)
        hours[dt.datetime.fromtimestamp(r.created_ms / 1000, tz).hour] += 1
    assert set(kinds) == {"text", "attachment", "embed", "sticker", "reply"}
    # Diurnal cycle in the guild's own timezone: evenings are far busier than 4 a.m.
    assert hours[20] > 4 * hours[4]
    # Heavy tail: the busiest tenth of authors write a large share of the messages.
    per_author = sorted(
        (n for g in led.guilds.values() for n in g.by_author.values()), reverse=True
    )
    top = per_author[: max(1, len(per_author) // 10)]
    assert sum(top) > 0.3 * sum(per_author)
    assert any(r.is_bot for r in led.messages.values())
    assert any(r.thread_parent_id for r in led.messages.values())
    for gid, g in led.guilds.items():
        sessions, seconds = led.voice_totals(gid)
        assert sessions > 0
        assert seconds > 0
        assert g.joins > 0
        assert g.leaves > 0
        assert len(g.daily_member_counts) >= 7
        assert g.voice_events["move"] > 0
        assert g.voice_events["mute"] > 0
    channel_types = {c.type for c in sim.world.channels.values()}
    assert {0, 2, 11, 13} <= channel_types


async def test_control_api_drives_a_simulator(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(guilds=2, seed=41)
    bot = Bot(make_client())
    bots.append(bot)
    await bot.start(sim.config.token)
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: dict[str, object]) -> dict[str, object]:
            async with http.post(sim.url + path, json=body) as r:
                assert r.status == 200, await r.text()
                data: dict[str, object] = await r.json()
                return data

        assert (await post("/_sim/activity/step", {"count": 50, "family": "message"})) == {
            "emitted": 50
        }
        await post("/_sim/activity/start", {"rate": 200})
        await asyncio.sleep(0.5)
        await post("/_sim/activity/stop", {})
        await post("/_sim/faults/reconnect", {"shard_id": 0})
        await post("/_sim/history", {"days": 3, "messages_per_day": 20})
        async with http.get(sim.url + "/_sim/ledger") as r:
            ledger = await r.json()
        async with http.get(sim.url + "/_sim/sessions") as r:
            sessions = await r.json()
        async with http.post(sim.url + "/_sim/faults/drop", json={"shard_id": 5}) as r:
            assert r.status == 409
    live = [r for r in sim.ledger.messages.values() if not r.historical]
    await bot.raw.wait_for(lambda: len(bot.raw.of("MESSAGE_CREATE")) == len(live))
    total = sum(g["messages"]["total"] for g in ledger["guilds"].values())
    assert total == len(sim.ledger.messages) >= 50 + 60
    assert len(sessions) == 1
    assert sessions[0]["shard"] == [0, 1]


async def test_replay_emits_historic_timestamps(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=2, seed=42)
    # Live traffic first: the replay must not inherit the live id clock (it did, once, and
    # every replayed message then carried the present time in its id).
    live = sim.step(20, family="message")
    assert live
    weeks_ago = now_ms() - 21 * 86_400_000
    sim.start_activity(500, replay_from_ms=weeks_ago, speed=86_400 * 7)  # a week per second
    await asyncio.sleep(1.0)
    await sim.stop_activity()
    replayed = [r for r in sim.ledger.messages.values() if r.created_ms < now_ms() - 60_000]
    times = sorted(r.created_ms for r in replayed)
    assert times[0] < weeks_ago + 86_400_000
    assert times[-1] - times[0] > 3 * 86_400_000
    # What a client reads: the time inside the snowflake is the event's own time.
    for record in replayed:
        assert (record.id >> 22) + DISCORD_EPOCH_MS == record.created_ms


async def test_cli_prints_url_and_settings() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.simulator",
        "--guilds",
        "2",
        "--seed",
        "5",
        "--history-days",
        "1",
        "--history-per-day",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(__import__("pathlib").Path(__file__).parent),
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("Control API") for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert raw, "simulator exited early"
            lines.append(raw.decode().strip())
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert set(env) == {
            "HERWA_DISCORD_TOKEN",
            "HERWA_DISCORD_API_BASE",
            "HERWA_DISCORD_GATEWAY_URL",
        }
        base = env["HERWA_DISCORD_API_BASE"]
        assert base.startswith("http://127.0.0.1:")
        assert base.endswith("/api/v10")
        root = base.removesuffix("/api/v10")
        async with aiohttp.ClientSession() as http, http.get(root + "/_sim/ledger") as r:
            ledger = await r.json()
        assert sum(g["messages"]["total"] for g in ledger["guilds"].values()) == 10
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0


async def test_join_family_only_joins(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=2, seed=11)
    sim.step(200, family="join")
    members = [g["members"] for g in sim.ledger.summary()["guilds"].values()]
    assert sum(m["joins"] for m in members) >= 200
    assert sum(m["leaves"] for m in members) == 0
