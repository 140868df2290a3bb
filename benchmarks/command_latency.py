"""Slash-command latency, interaction to complete response, on a guild with ≥ 10 M messages.

Usage: ``python benchmarks/command_latency.py [--messages 10000000] [--runs 40]``. Uses the
servers named by HERWA_POSTGRES_DSN / HERWA_REDIS_URL / HERWA_CLICKHOUSE_URL (and
HERWA_CLICKHOUSE_READONLY_URL), or starts an embedded DevStack in a temporary directory.
Creates throw-away databases, then:

1. generates the messages straight into ClickHouse (INSERT … SELECT FROM numbers(), ~90 days,
   5,000 authors, 37 channels) plus voice sessions and joins/leaves, and builds the hourly and
   15-minute rollups through the ETL's own recompute;
2. starts the simulator and a real discord.py client with Herwa's commands installed (result
   cache off, so every call queries ClickHouse; quota and rate limit out of the way);
3. invokes /heatmap and /overview over 7, 30 and 90 days ``--runs`` times each and prints
   p50/p99 from the INTERACTION_CREATE dispatch to the bot's final response arriving at the
   simulator (deferred answers included), then the same with the result cache on.
"""

# ruff: noqa: S608 - only integers this script computes are formatted into its SQL.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import urllib.parse
import uuid
from typing import Any

import asyncpg
import discord
from _stores import bench_stores
from discord import app_commands
from redis.asyncio import Redis

from herwa import platform
from herwa.bot.commands import CommandDeps, install
from herwa.config import CommandSettings
from herwa.etl.rollups import recompute
from herwa.schema import migrate
from herwa.simulator import Simulator, SimulatorConfig, point_discord_at
from herwa.stores import clickhouse_url_client

DAY = 86_400
END = "2024-03-31"
START_EPOCH = 1_704_067_200 + 0 * DAY  # 2024-01-01 00:00 UTC; END + 1 day = 91 days later
SPAN_SECONDS = 91 * DAY


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def generate(ch: Any, guild: int, messages: int) -> None:
    t = time.perf_counter()
    step_ms = SPAN_SECONDS * 1000 // messages
    await ch.command(
        f"""
        INSERT INTO messages (message_id, guild_id, channel_id, thread_id, author_id,
                              created_at, kind, is_bot, source, version)
        SELECT 1000000000000 + number, {{g:UInt64}}, 100 + number % 37, 0,
               10000 + (number * 7919) % 5000,
               fromUnixTimestamp64Milli(toInt64({START_EPOCH * 1000} + number * {step_ms})),
               'text', number % 50 = 0, 'gateway', 1
        FROM numbers({messages})
        """,
        parameters={"g": guild},
        settings={"max_insert_threads": 2, "max_block_size": 1_000_000},
    )
    # One other guild, so every query really has to filter by guild.
    await ch.command(
        f"""
        INSERT INTO messages (message_id, guild_id, channel_id, thread_id, author_id,
                              created_at, kind, is_bot, source, version)
        SELECT 9000000000000 + number, 42, 7, 0, 99, fromUnixTimestamp64Milli(
               toInt64({START_EPOCH * 1000} + number * 60000)), 'text', false, 'gateway', 1
        FROM numbers(100000)
        """
    )
    await ch.command(
        f"""
        INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, channel_kind,
                                    joined_at, left_at, duration_seconds, muted_seconds,
                                    close_reason, is_bot, version)
        SELECT generateUUIDv4(number), {{g:UInt64}}, 500 + number % 3,
               10000 + (number * 31) % 5000, 'voice',
               toDateTime64({START_EPOCH} + number * 39, 3, 'UTC'),
               toDateTime64({START_EPOCH} + number * 39 + 600 + number % 3000, 3, 'UTC'),
               600 + number % 3000, 0, 'leave', false, 1
        FROM numbers(200000)
        """,
        parameters={"g": guild},
    )
    await ch.command(
        f"""
        INSERT INTO member_events (guild_id, user_id, event, at, account_created_at, is_bot,
                                   version)
        SELECT {{g:UInt64}}, 20000 + number, if(number % 5 = 0, 'leave', 'join'),
               toDateTime64({START_EPOCH} + number * 157, 3, 'UTC'),
               toDateTime64({START_EPOCH - 400 * DAY}, 3, 'UTC'), false, 1
        FROM numbers(50000)
        """,
        parameters={"g": guild},
    )
    print(f"  generated {messages:,} messages in {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    hours = [
        (g, h) for g in (guild, 42) for h in range(START_EPOCH, START_EPOCH + SPAN_SECONDS, 3600)
    ]
    # A week of hours per call keeps each recompute statement's working set modest.
    for i in range(0, len(hours), 168):
        await recompute(ch, hours[i : i + 168])
    print(f"  rollups recomputed in {time.perf_counter() - t:.1f}s", flush=True)
    rows = (
        await ch.query(
            "SELECT count() FROM messages WHERE guild_id = {g:UInt64}", parameters={"g": guild}
        )
    ).result_rows[0][0]
    hourly = (await ch.query("SELECT count() FROM message_activity_hourly")).result_rows[0][0]
    print(f"  guild has {rows:,} message rows; hourly rollup {hourly:,} rows", flush=True)


async def measure(
    sim: Simulator, guild: int, user: int, name: str, options: list[Any], runs: int
) -> list[float]:
    channel = next(c.id for c in sim.world.guilds[guild].channels.values() if c.type == 0)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        rec = sim.activity.invoke_command(guild, channel, user, name, options, at_ms=sim.now_ms())
        await sim.interactions.wait(rec.id, 60)
        out.append(time.perf_counter() - t)
        embeds = (rec.original or {}).get("embeds") or [{}]
        if rec.original is None or "sending commands too quickly" in str(rec.original):
            raise SystemExit(f"unexpected answer: {rec.original}")
        assert embeds[0].get("title"), rec.original
    return out


async def run(endpoints: dict[str, str], messages: int, runs: int) -> None:
    name = f"herwa_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(endpoints["pg"])
    await admin.execute(f'CREATE DATABASE "{name}"')
    ch_admin = await clickhouse_url_client(endpoints["ch"])
    await ch_admin.command(f"CREATE DATABASE {name}")
    pg_dsn, ch_url = _with_db(endpoints["pg"], name), _with_db(endpoints["ch"], name)
    ro_url = _with_db(endpoints["ch_ro"], name)
    sim = Simulator(SimulatorConfig(guilds=1, seed=5))
    await sim.start()
    point_discord_at(sim.api_base, sim.ws_url)
    guild = next(iter(sim.world.guilds))
    user = sim.world.guilds[guild].owner_id
    client: discord.Client | None = None
    try:
        await migrate(pg_dsn, ch_url)
        ch = await clickhouse_url_client(ch_url)
        await generate(ch, guild, messages)
        await ch.close()
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
        await platform.seed(pool, platform.load())
        await pool.execute(
            """INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,
                   source_name, source_uid)
               SELECT $1, 'enterprise', array_agg(feature), $2::jsonb, 'bench', 'bench', 'b'
               FROM tier_features WHERE tier = 'enterprise'""",
            guild,
            json.dumps({"queries_per_month": 10**9, "history_days": 100_000}),
        )
        redis = Redis.from_url(endpoints["redis"])
        prefix = f"bench{uuid.uuid4().hex[:6]}:"
        ro = await clickhouse_url_client(ro_url)
        results: list[tuple[str, list[float]]] = []
        for cache_ttl in (0, 60):
            settings = CommandSettings(rate_limit_count=1000, cache_ttl_seconds=cache_ttl)
            client = discord.Client(
                intents=discord.Intents.default(),
                chunk_guilds_at_startup=False,
                guild_ready_timeout=0.2,
            )
            tree = app_commands.CommandTree(client)
            install(tree, CommandDeps(pool, redis, ro, settings, redis_prefix=prefix))
            ready = asyncio.Event()

            async def on_ready(ready: asyncio.Event = ready) -> None:
                ready.set()

            client.event(on_ready)
            task = asyncio.create_task(client.start(sim.config.token))
            await asyncio.wait_for(ready.wait(), 30)
            await tree.sync()
            label = "no cache" if cache_ttl == 0 else "cached"
            for command in ("heatmap", "overview"):
                for days in (7, 30, 90):
                    options = [
                        {"name": "days", "type": 4, "value": days},
                        {"name": "end", "type": 3, "value": END},
                    ]
                    await measure(sim, guild, user, command, options, 2)  # warm up
                    times = await measure(
                        sim,
                        guild,
                        user,
                        command,
                        options,
                        runs if cache_ttl == 0 else max(10, runs // 2),
                    )
                    results.append((f"/{command} days={days:<3} {label}", times))
                    print(
                        f"  {results[-1][0]:<30} p50 {pct(times, 0.5) * 1000:7.1f} ms   "
                        f"p99 {pct(times, 0.99) * 1000:7.1f} ms   "
                        f"mean {statistics.fmean(times) * 1000:7.1f} ms  (n={len(times)})",
                        flush=True,
                    )
            await client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            client = None
        await ro.close()
        await redis.aclose()
        await pool.close()
    finally:
        if client is not None:
            await client.close()
        await sim.stop()
        with contextlib.suppress(Exception):
            await ch_admin.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        await ch_admin.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print(f"command latency, {args.messages:,} messages, {args.runs} runs per case", flush=True)
    with bench_stores() as e:
        env = {
            "pg": e.postgres_dsn,
            "redis": e.redis_url,
            "ch": e.clickhouse_url,
            "ch_ro": e.clickhouse_readonly_url,
        }
        asyncio.run(run(env, args.messages, args.runs))


if __name__ == "__main__":
    main()
