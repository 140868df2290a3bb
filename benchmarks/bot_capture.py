"""The bot's sustained capture rate beside the bare discord.py ceiling.

Prints MESSAGE_CREATE per second for
  (1) a bare discord.py client counting in ``on_message`` (the simulator issue's ceiling,
      the very same consumer as benchmarks/simulator_ceiling.py), and
  (2) ``herwa bot`` — one process, one shard — from the first event pushed to the last row
      *committed* in Postgres (raw-payload parsers → buffer → COPY → INSERT … ON CONFLICT),
and their ratio, alternating the two ``--rounds`` times (target: the median ≥ 200 %). Both
consumers run in their own process pinned to one CPU; the simulator runs in this process and
events are generated before the clock starts.

    .venv/bin/python benchmarks/bot_capture.py [--messages 100000]

Stores: HERWA_POSTGRES_DSN / HERWA_REDIS_URL / HERWA_CLICKHOUSE_URL if set (a throw-away
Postgres database is created), otherwise an embedded DevStack in a temporary directory. The bot
serves slash commands too, so it needs ClickHouse even though this benchmark sends none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
from _stores import bench_stores
from simulator_ceiling import benchmark_simulator, consume

from herwa.devstack import Endpoints

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 2.0  # issue #19: twice the bare client


def _pin() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})


async def bare(messages: int) -> float:
    sim = benchmark_simulator()
    await sim.start()
    try:
        _, rate = await consume(sim, "discord", messages, preexec_fn=_pin)
        return rate
    finally:
        await sim.stop()


async def capture(messages: int, dsn: str, stores: Endpoints) -> tuple[float, int]:
    await _migrate_pg(dsn)
    sim = benchmark_simulator()
    await sim.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
    env.update(sim.env())
    env.update(
        {
            "HERWA_POSTGRES_DSN": dsn,
            "HERWA_REDIS_URL": stores.redis_url,
            "HERWA_CLICKHOUSE_URL": stores.clickhouse_url,
            "HERWA_CLICKHOUSE_READONLY_URL": stores.clickhouse_readonly_url,
            "HERWA_REDIS_KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}:",
            "HERWA_BOT_POD_NAME": "bench-0",
            "HERWA_DISCORD_SHARD_COUNT": "1",
            "HERWA_DISCORD_MESSAGE_CONTENT_INTENT": "true",
            "HERWA_BOT_BACKFILL_ENABLED": "false",
            "HERWA_TELEMETRY_PORT": "0",
            "HERWA_TELEMETRY_HOST": "127.0.0.1",
            "HERWA_TELEMETRY_LOG_LEVEL": "WARNING",
            "HERWA_BOT_GUILD_READY_TIMEOUT_SECONDS": "0.2",
            "OTEL_SDK_DISABLED": "true",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.cli",
        "bot",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_pin,
    )
    conn = await asyncpg.connect(dsn)
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 60)  # the telemetry port line
        deadline = time.monotonic() + 60
        while not any(s.connected for s in sim.sessions()):
            assert time.monotonic() < deadline, "bot did not connect"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # GUILD_CREATEs and the first flush
        prepared = sim.prepare_burst(messages, family="message")
        expected = sum(1 for m in sim.ledger.messages.values() if not m.is_bot)
        t0 = time.perf_counter()
        push = asyncio.create_task(sim.push_prepared(prepared))
        while True:
            n = await conn.fetchval("SELECT count(*) FROM message_events")
            if n >= expected:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        await push
        return messages / elapsed, int(n)
    finally:
        await conn.close()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        await sim.stop()


async def _migrate_pg(dsn: str) -> None:
    # Postgres only: the capture path never touches ClickHouse.
    from herwa.schema import MigrationReport, migrate_postgres

    conn = await asyncpg.connect(dsn)
    try:
        await migrate_postgres(conn, MigrationReport())
    finally:
        await conn.close()


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def main_async(stores: Endpoints, messages: int, rounds: int) -> None:
    dsn = stores.postgres_dsn
    name = f"herwa_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    for round_ in range(1, rounds + 1):
        await admin.execute(f'CREATE DATABASE "{name}_{round_}"')
    try:
        print(f"MESSAGE_CREATE, {messages} messages, each consumer one process on one CPU")
        ratios = []
        for round_ in range(1, rounds + 1):
            # Alternated, so both consumers see the same machine on a shared host.
            ceiling = await bare(messages)
            rate, rows = await capture(messages, _with_db(dsn, f"{name}_{round_}"), stores)
            ratios.append(rate / ceiling)
            print(f"  round {round_}: bare discord.py on_message (ceiling) {ceiling:>9,.0f}/s")
            print(f"           herwa bot, gateway -> committed rows {rate:>9,.0f}/s ({rows} rows)")
            print(f"           capture / ceiling {rate / ceiling:.0%}")
        ratio = statistics.median(ratios)
        print(f"  median capture / ceiling: {ratio:.0%} (target >= {TARGET:.0%})")
        print(f"target met: {'yes' if ratio >= TARGET else 'no'}")
    finally:
        for round_ in range(1, rounds + 1):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}_{round_}" WITH (FORCE)')
        await admin.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with bench_stores() as stores:
        asyncio.run(main_async(stores, args.messages, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
