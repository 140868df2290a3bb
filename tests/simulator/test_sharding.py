"""Sharded discord.py clients: routing, the identify rate limit, processes per shard."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import discord
import orjson

from herwa.simulator import GatewayConfig, Simulator
from tests.simulator.conftest import Bot, SimFactory, make_client

WORKER = Path(__file__).with_name("shard_worker.py")


class BucketAwareClient(discord.AutoShardedClient):
    """Waits only as long as Discord's rule needs: one IDENTIFY per ``max_concurrency`` bucket
    (``shard_id % max_concurrency``) per 5 s. discord.py's default hook sleeps 5 s before every
    IDENTIFY after the first whatever the bucket, which would only make these tests slow; with
    max_concurrency=2 both shards may identify at once, and the simulator checks that for real.
    """

    max_concurrency = 2
    window = 5.0

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._last_identify: dict[int, float] = {}

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        bucket = (shard_id or 0) % self.max_concurrency
        last = self._last_identify.get(bucket)
        if last is not None:
            await asyncio.sleep(max(0.0, last + self.window - time.monotonic()))
        self._last_identify[bucket] = time.monotonic()


class NoWaitClient(discord.AutoShardedClient):
    """Identifies as fast as it can: the identify flood the simulator must refuse."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


def _shards(sim: Simulator, count: int) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {i: set() for i in range(count)}
    for gid in sim.world.guilds:
        out[sim.shard_of(gid, count)].add(gid)
    return out


async def test_autosharded_client_two_shards(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(
        guilds=6, seed=11, recommended_shards=2, gateway=GatewayConfig(max_concurrency=2)
    )
    expected = _shards(sim, 2)
    assert all(expected.values()), "the world's guild ids must spread over both shards"
    # No shard_count: the client asks GET /gateway/bot, which points it at the simulator.
    bot = Bot(make_client(BucketAwareClient))
    bots.append(bot)
    await bot.start(sim.config.token)
    client = bot.client
    assert client.shard_count == 2
    assert sorted((s.shard_id, s.shard_count) for s in sim.sessions()) == [(0, 2), (1, 2)]
    assert {g.id for g in client.guilds} == set(sim.world.guilds)
    assert sum(sim.ledger.identify_refused.values()) == 0

    sim.step(300, family="message")
    await bot.raw.wait_for(lambda: len(bot.raw.of("MESSAGE_CREATE")) >= 300)
    got = [int(m["id"]) for m in bot.raw.of("MESSAGE_CREATE")]
    assert sorted(got) == sorted(sim.ledger.messages)
    for d in sim.ledger.deliveries:
        assert d.guild_id is not None
        assert sim.shard_of(d.guild_id, 2) == d.shard_id
        assert d.connected
    for m in bot.messages:
        assert m.guild is not None
        assert m.guild.shard_id == sim.shard_of(m.guild.id, 2)

    # One shard's connection dies; the other keeps going; the dropped one resumes.
    await sim.inject_fault("drop", 1)
    sim.step(100, family="message")
    await bot.raw.wait_for(lambda: len(bot.raw.of("MESSAGE_CREATE")) >= 400, timeout=20)
    await asyncio.sleep(0.2)
    got = [int(m["id"]) for m in bot.raw.of("MESSAGE_CREATE")]
    assert len(got) == len(set(got)) == 400
    assert len(bot.raw.of("RESUMED")) == 1


async def test_identify_flood_is_refused(make_sim: SimFactory, bots: list[Bot]) -> None:
    sim = await make_sim(
        guilds=4, seed=12, gateway=GatewayConfig(max_concurrency=1, identify_window_s=1.0)
    )
    bot = Bot(make_client(NoWaitClient, shard_count=2))
    bots.append(bot)
    await bot.start(sim.config.token, timeout=20)
    # Shard 1 identified in the same bucket right after shard 0: INVALID_SESSION, again and
    # again until the window passed; then it got in.
    refused = sum(sim.ledger.identify_refused.values())
    assert refused >= 1
    invalid = bot.raw.ops(9)
    assert len(invalid) == refused
    assert all(e["d"] is False for e in invalid)
    assert sorted(s.shard_id for s in sim.sessions()) == [0, 1]


async def _read_json_line(
    stream: asyncio.StreamReader, key: str, timeout: float
) -> dict[str, object]:
    async def read() -> dict[str, object]:
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"worker exited before printing {key!r}")
            obj: dict[str, object] = orjson.loads(line)
            if key in obj:
                return obj

    return await asyncio.wait_for(read(), timeout)


async def test_plain_clients_per_shard_in_separate_processes(make_sim: SimFactory) -> None:
    sim = await make_sim(guilds=6, seed=13, gateway=GatewayConfig(max_concurrency=2))
    expected = _shards(sim, 2)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for shard in (0, 1):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WORKER),
                    sim.api_base,
                    sim.ws_url,
                    sim.config.token,
                    str(shard),
                    "2",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for shard, p in enumerate(procs):
            assert p.stdout is not None
            ready = await _read_json_line(p.stdout, "ready", 60)
            shards = ready["ready"]
            assert isinstance(shards, list)
            assert set(shards) == expected[shard]
        sim.step(200, family="message")
        seen: dict[int, list[int]] = {0: [], 1: []}
        for shard, p in enumerate(procs):
            assert p.stdout is not None
            want = sum(
                1 for r in sim.ledger.messages.values() if sim.shard_of(r.guild_id, 2) == shard
            )
            while len(seen[shard]) < want:
                obj = await _read_json_line(p.stdout, "message", 30)
                assert sim.shard_of(int(obj["guild"]), 2) == shard  # type: ignore[call-overload]
                seen[shard].append(int(obj["message"]))  # type: ignore[call-overload]
        assert sorted(seen[0] + seen[1]) == sorted(sim.ledger.messages)
        assert sum(sim.ledger.identify_refused.values()) == 0
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                with contextlib.suppress(Exception):
                    await p.wait()
