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
3. invokes /heatmap and /overview over 7, 30, 90 and 365 days ``--runs`` times each and prints
   p50/p99 from the INTERACTION_CREATE dispatch to the bot's final response arriving at the
   simulator (deferred answers included, the PNG included), then the same with the result
   cache on, each beside the target (p50 <= 100 ms, p99 <= 300 ms), and where the median
   invocation's time went: the ClickHouse query, the PNG render, sending the reply, and the
   rest (dispatch, gate, quota, settings, the simulator's round trip), plus the render's own
   CPU time (on a loaded machine wall time is mostly waiting for a core). The phases are timed
   by wrapping the functions the commands call, in this process; the bot code is unchanged.

For /overview, the statement alone is also timed as it is now and as it was before
message_activity_author_days (ClickHouse migration 0009: messages and active members from the
hourly rollup), side by side on the same data.

The generated data span ``--span-days`` (91 by default, the figures of issue 19); a 365-day
range over it reads the same rows plus empty months.
"""

# ruff: noqa: S608 - only integers this script computes are formatted into its SQL.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import discord
from _stores import bench_stores
from discord import app_commands
from redis.asyncio import Redis

from herwa import analytics, platform
from herwa.bot.commands import CommandDeps, install
from herwa.bot.commands import heatmap as heatmap_command
from herwa.config import CommandSettings
from herwa.etl.rollups import recompute
from herwa.schema import migrate
from herwa.simulator import Simulator, SimulatorConfig, point_discord_at
from herwa.stores import clickhouse_url_client

DAY = 86_400
END_EPOCH = 1_711_929_600  # 2024-04-01 00:00 UTC: the data ends the day before
END = "2024-03-31"
RANGES = (7, 30, 90, 365)
P50_TARGET_MS, P99_TARGET_MS = 100.0, 300.0
PHASES = ("query", "render", "send", "rest")

F = TypeVar("F", bound=Callable[..., Any])

# /overview's statement before migration 0009, for the side-by-side figure.
_OVERVIEW_BEFORE = """
    SELECT 'messages', toFloat64(sum(messages)), uniqExactIf(author_id, messages > 0)
    FROM message_activity_hourly FINAL
    WHERE guild_id = {guild_id:UInt64} AND hour >= toDateTime({since:UInt32}, 'UTC')
      AND hour < toDateTime({until:UInt32}, 'UTC') AND (NOT is_bot OR {bots:Bool})
    UNION ALL
    SELECT 'voice', toFloat64(sum(greatest(0, dateDiff('millisecond',
               greatest(joined_at, toDateTime({since:UInt32}, 'UTC')),
               least(left_at, toDateTime({until:UInt32}, 'UTC')))) / 1000)), uniqExact(user_id)
    FROM voice_sessions FINAL
    WHERE guild_id = {guild_id:UInt64} AND joined_at < toDateTime({until:UInt32}, 'UTC')
      AND left_at > toDateTime({since:UInt32}, 'UTC') AND (NOT is_bot OR {bots:Bool})
    UNION ALL
    SELECT 'members', toFloat64(countIf(event = 'join')), countIf(event = 'leave')
    FROM member_events FINAL
    WHERE guild_id = {guild_id:UInt64} AND at >= toDateTime({since:UInt32}, 'UTC')
      AND at < toDateTime({until:UInt32}, 'UTC') AND (NOT is_bot OR {bots:Bool})
    SETTINGS do_not_merge_across_partitions_select_final = 1
"""


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Phases:
    """Seconds spent in each phase by the invocation under way (one at a time)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def start(self) -> None:
        self.current = dict.fromkeys(PHASES, 0.0)
        self.cpu = {}

    def timed(self, phase: str, fn: F) -> F:
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.current[phase] += time.perf_counter() - t

            return timed_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            t, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - t
                # A render runs in a worker thread: its own CPU time shows what a loaded
                # machine's wall time hides.
                self.cpu[phase] = self.cpu.get(phase, 0.0) + time.thread_time() - cpu

        return timed_sync  # type: ignore[return-value]

    def install(self) -> None:
        # The commands look these up at call time (module and class attributes), so wrapping
        # them here times the real calls without any hook in the bot's code. The reply is
        # timed at discord.py's two public ways of sending it.
        holders: tuple[tuple[Any, str, str], ...] = (
            (analytics, "heatmap", "query"),
            (analytics, "overview", "query"),
            (heatmap_command, "heatmap_png", "render"),
            (discord.InteractionResponse, "send_message", "send"),
            (discord.Interaction, "edit_original_response", "send"),
        )
        for holder, name, phase in holders:
            setattr(holder, name, self.timed(phase, getattr(holder, name)))


PHASE = Phases()


def verdict(times: list[float]) -> tuple[float, float, bool]:
    p50, p99 = pct(times, 0.5) * 1000, pct(times, 0.99) * 1000
    return p50, p99, p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS


async def generate(ch: Any, guild: int, messages: int, span_days: int) -> None:
    t = time.perf_counter()
    start = END_EPOCH - span_days * DAY
    span_seconds = span_days * DAY
    step_ms = span_seconds * 1000 // messages
    await ch.command(
        f"""
        INSERT INTO messages (message_id, guild_id, channel_id, thread_id, author_id,
                              created_at, kind, is_bot, source, version)
        SELECT 1000000000000 + number, {{g:UInt64}}, 100 + number % 37, 0,
               10000 + (number * 7919) % 5000,
               fromUnixTimestamp64Milli(toInt64({start * 1000} + number * {step_ms})),
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
               toInt64({start * 1000} + number * 60000)), 'text', false, 'gateway', 1
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
               toDateTime64({start} + number * 39, 3, 'UTC'),
               toDateTime64({start} + number * 39 + 600 + number % 3000, 3, 'UTC'),
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
               toDateTime64({start} + number * 157, 3, 'UTC'),
               toDateTime64({start - 400 * DAY}, 3, 'UTC'), false, 1
        FROM numbers(50000)
        """,
        parameters={"g": guild},
    )
    print(f"  generated {messages:,} messages in {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    hours = [(g, h) for g in (guild, 42) for h in range(start, start + span_seconds, 3600)]
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
) -> tuple[list[float], list[dict[str, float]]]:
    """Total seconds per invocation, and each one's phases (``rest`` = total - the others)."""
    channel = next(c.id for c in sim.world.guilds[guild].channels.values() if c.type == 0)
    out, phases = [], []
    for _ in range(runs):
        PHASE.start()
        t = time.perf_counter()
        rec = sim.activity.invoke_command(guild, channel, user, name, options, at_ms=sim.now_ms())
        await sim.interactions.wait(rec.id, 60)
        total = time.perf_counter() - t
        out.append(total)
        split = dict(PHASE.current)
        split["rest"] = total - sum(split.values())
        if name == "heatmap":
            split["render CPU"] = PHASE.cpu.get("render", 0.0)
        phases.append(split)
        embeds = (rec.original or {}).get("embeds") or [{}]
        if rec.original is None or "sending commands too quickly" in str(rec.original):
            raise SystemExit(f"unexpected answer: {rec.original}")
        assert embeds[0].get("title"), rec.original
        if name == "heatmap" and not (rec.original.get("attachments")):
            raise SystemExit(f"/heatmap answered without its PNG: {rec.original}")
    return out, phases


async def overview_side_by_side(ro: Any, guild: int, days: int, runs: int) -> str:
    """Median ms of /overview's statement now and before migration 0009, alternating."""
    since, until = END_EPOCH - days * DAY, END_EPOCH
    now_s, before_s = [], []
    for _ in range(runs):
        t = time.perf_counter()
        await analytics.overview(
            ro,
            guild,
            datetime.fromtimestamp(since, UTC),
            datetime.fromtimestamp(until, UTC),
        )
        now_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        await ro.query(
            _OVERVIEW_BEFORE,
            parameters={"guild_id": guild, "since": since, "until": until, "bots": False},
        )
        before_s.append(time.perf_counter() - t)
    return (
        f"statement alone: now {statistics.median(now_s) * 1000:.1f} ms,"
        f" before 0009 {statistics.median(before_s) * 1000:.1f} ms"
    )


def median_split(phases: list[dict[str, float]]) -> str:
    """Each phase's median over the runs, in ms."""
    return "  ".join(
        f"{p} {statistics.median(s[p] for s in phases) * 1000:5.1f}" for p in phases[0]
    )


async def run(endpoints: dict[str, str], messages: int, runs: int, span_days: int) -> bool:
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
        await generate(ch, guild, messages, span_days)
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
        PHASE.install()
        print(
            f"  targets: p50 <= {P50_TARGET_MS:.0f} ms, p99 <= {P99_TARGET_MS:.0f} ms;"
            " phases: medians in ms",
            flush=True,
        )
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
                for days in RANGES:
                    options = [
                        {"name": "days", "type": 4, "value": days},
                        {"name": "end", "type": 3, "value": END},
                    ]
                    await measure(sim, guild, user, command, options, 2)  # warm up
                    times, phases = await measure(
                        sim,
                        guild,
                        user,
                        command,
                        options,
                        runs if cache_ttl == 0 else max(10, runs // 2),
                    )
                    results.append((f"/{command} days={days:<3} {label}", times))
                    p50, p99, met = verdict(times)
                    print(
                        f"  {results[-1][0]:<28} p50 {p50:6.1f} ms (<= {P50_TARGET_MS:.0f})  "
                        f"p99 {p99:6.1f} ms (<= {P99_TARGET_MS:.0f})  "
                        f"{'ok  ' if met else 'MISS'}  n={len(times)}  |  "
                        f"{median_split(phases)}",
                        flush=True,
                    )
                    if command == "overview" and cache_ttl == 0:
                        side = await overview_side_by_side(ro, guild, days, max(5, runs // 4))
                        print(f"    {side}", flush=True)
            await client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            client = None
        await ro.close()
        await redis.aclose()
        await pool.close()
        return all(verdict(times)[2] for _, times in results)
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
    parser.add_argument(
        "--span-days", type=int, default=91, choices=range(7, 366), metavar="7..365"
    )
    args = parser.parse_args()
    if args.messages < 1000 or args.runs < 1:
        parser.error("--messages must be >= 1000 and --runs >= 1")
    print(
        f"command latency, {args.messages:,} messages over {args.span_days} days,"
        f" {args.runs} runs per case",
        flush=True,
    )
    with bench_stores() as e:
        env = {
            "pg": e.postgres_dsn,
            "redis": e.redis_url,
            "ch": e.clickhouse_url,
            "ch_ro": e.clickhouse_readonly_url,
        }
        met = asyncio.run(run(env, args.messages, args.runs, args.span_days))
    print(f"target met: {'yes' if met else 'no'}", flush=True)


if __name__ == "__main__":
    main()
