"""Resident memory of one ``herwa bot`` process holding one shard of 2,500 guilds.

    .venv/bin/python benchmarks/bot_memory.py [--guilds 2500] [--seconds 60] [--rate 200]

The guilds have a realistic size mix: most are small, some have hundreds or thousands of
members, and a few have over 100,000 (``SIZE_MIX``). The simulator runs in this process; the bot
is a real ``herwa bot`` subprocess (one shard, backfill on, the default intents) against
migrated stores. After every GUILD_CREATE has been recorded, the simulator plays its default
random traffic (messages, edits, deletes, voice, joins and leaves, threads, and slash commands,
charts included) at ``--rate`` events per second for ``--seconds``; the bot's RSS is sampled
every second. Printed: RSS once the guilds are loaded, the steady RSS (the median of the last
half of the samples) and its maximum beside the target (<= 150 MB), and ``target met``; then,
for information, the RSS after one /heatmap: the first chart loads Pillow and its fonts.

Stores: HERWA_POSTGRES_DSN / HERWA_REDIS_URL / HERWA_CLICKHOUSE_URL (and
HERWA_CLICKHOUSE_READONLY_URL) if set (throw-away databases are created), otherwise an
embedded DevStack in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
from _stores import bench_stores

from herwa import platform
from herwa.devstack import Endpoints
from herwa.schema import migrate
from herwa.simulator import Simulator, SimulatorConfig, WorldConfig
from herwa.stores import clickhouse_url_client

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 150.0
_DAY_MS = 86_400_000

# (share of the guilds, (fewest, most) members), the rest small. A long tail like Discord's:
# bots are mostly added to small servers, and a handful of huge ones carry most members.
SIZE_MIX: tuple[tuple[float, tuple[int, int]], ...] = (
    (0.80, (5, 60)),
    (0.15, (60, 250)),
    (0.04, (250, 2_000)),
    (0.0088, (2_000, 20_000)),
)
HUGE = (100_000, 120_000, 150_000)  # "a few of 100k+"


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


def build_simulator(guilds: int, seed: int) -> Simulator:
    """``guilds`` guilds of SIZE_MIX sizes (the simulator builds the smallest, then members are
    added to the larger ones before any client connects)."""
    sim = Simulator(
        SimulatorConfig(
            seed=seed,
            guilds=guilds,
            record_deliveries=False,
            store_history=True,  # edits and deletes pick stored messages
            world=WorldConfig(guilds=guilds, members_per_guild=SIZE_MIX[0][1]),
        )
    )
    rng = random.Random(seed)
    ordered = list(sim.world.guilds.values())
    rng.shuffle(ordered)
    sizes = list(HUGE)
    for share, (lo, hi) in SIZE_MIX[1:]:
        sizes += [rng.randint(lo, hi) for _ in range(round(share * guilds))]
    for guild, size in zip(ordered, sizes, strict=False):
        joined = sim.now_ms() - 400 * _DAY_MS
        for _ in range(size - len(guild.members)):
            sim.world.add_member(guild, rng, joined + rng.randrange(0, 399) * _DAY_MS)
    return sim


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def run(stores: Endpoints, guilds: int, seconds: float, rate: float) -> bool:
    name = f"herwa_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stores.postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    ch_admin = await clickhouse_url_client(stores.clickhouse_url)
    await ch_admin.command(f"CREATE DATABASE {name}")
    dsn = _with_db(stores.postgres_dsn, name)
    proc: asyncio.subprocess.Process | None = None
    sim: Simulator | None = None
    tmp = tempfile.mkdtemp(prefix="herwa-bot-memory-")
    try:
        await migrate(dsn, _with_db(stores.clickhouse_url, name))
        # The tiers, as the operator seeds them: every guild gets the default (free) tier, so
        # the random slash commands are answered, charts included.
        seeding = await asyncpg.connect(dsn)
        try:
            await platform.seed(seeding, platform.load())
        finally:
            await seeding.close()
        t = time.perf_counter()
        sim = build_simulator(guilds, seed=11)
        members = [len(g.members) for g in sim.world.guilds.values()]
        print(
            f"  {guilds:,} guilds, {sum(members):,} members"
            f" (median {statistics.median(members):.0f},"
            f" {sum(m > 250 for m in members)} over 250, {sum(m >= 100_000 for m in members)}"
            f" over 100k); built in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        await sim.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
        env.update(sim.env())
        env.update(
            {
                "HERWA_POSTGRES_DSN": dsn,
                "HERWA_REDIS_URL": stores.redis_url,
                "HERWA_CLICKHOUSE_URL": _with_db(stores.clickhouse_url, name),
                "HERWA_CLICKHOUSE_READONLY_URL": _with_db(stores.clickhouse_readonly_url, name),
                "HERWA_REDIS_KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}:",
                "HERWA_BOT_POD_NAME": "bench-0",
                "HERWA_DISCORD_SHARD_COUNT": "1",
                "HERWA_TELEMETRY_PORT": "0",
                "HERWA_TELEMETRY_HOST": "127.0.0.1",
                "HERWA_TELEMETRY_LOG_LEVEL": "WARNING",
                "OTEL_SDK_DISABLED": "true",
            }
        )
        log = (Path(tmp) / "bot.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "herwa.cli", "bot", env=env, cwd=ROOT, stdout=log, stderr=log
        )
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            t = time.perf_counter()
            deadline = time.monotonic() + 600
            while (await pool.fetchval("SELECT count(*) FROM bot_member_counts")) < guilds:
                if proc.returncode is not None or time.monotonic() > deadline:
                    tail = (Path(tmp) / "bot.log").read_text()[-3000:]
                    raise SystemExit(f"the bot did not record every guild; its log ends:\n{tail}")
                await asyncio.sleep(0.5)
            loaded = rss_mb(proc.pid)
            print(
                f"  every guild recorded after {time.perf_counter() - t:.1f}s; RSS {loaded:.0f} MB",
                flush=True,
            )
            sim.start_activity(rate)
            samples = []
            for _ in range(int(seconds)):
                await asyncio.sleep(1)
                samples.append(rss_mb(proc.pid))
            await sim.stop_activity()
            # What drawing adds: the first chart loads Pillow and its fonts (for information).
            small = min(sim.world.guilds.values(), key=lambda g: len(g.members))
            answer = await sim.invoke_command(small.id, "heatmap", [], timeout=120)
            original = answer.get("original") or {}
            png = bool(original.get("attachments"))
            if not png:
                print(f"  /heatmap answered without a PNG: {original}", flush=True)
            await asyncio.sleep(2)
            charted = rss_mb(proc.pid)
            invoked = await pool.fetchval("SELECT count(*) FROM command_usage WHERE outcome = 'ok'")
        finally:
            await pool.close()
        steady = statistics.median(samples[len(samples) // 2 :])
        print(
            f"  {seconds:.0f}s of traffic at {rate:.0f} events/s ({invoked} commands answered):"
            f" RSS steady {steady:.0f} MB (target <= {TARGET_MB:.0f} MB),"
            f" max {max(samples):.0f} MB",
            flush=True,
        )
        print(
            f"  after one /heatmap ({'a PNG' if png else 'no PNG'}), Pillow loaded:"
            f" RSS {charted:.0f} MB (for information)",
            flush=True,
        )
        return steady <= TARGET_MB
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if sim is not None:
            await sim.stop()
        with contextlib.suppress(Exception):
            await ch_admin.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        await ch_admin.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guilds", type=int, default=2500)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=200.0)
    args = ap.parse_args()
    if args.guilds < 10 or args.seconds < 2 or args.rate <= 0:
        ap.error("--guilds must be >= 10, --seconds >= 2 and --rate > 0")
    print(f"bot memory, one process, one shard, {args.guilds:,} guilds", flush=True)
    with bench_stores() as stores:
        met = asyncio.run(run(stores, args.guilds, args.seconds, args.rate))
    print(f"target met: {'yes' if met else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
