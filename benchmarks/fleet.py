"""A fleet: hundreds of shards and a large guild count in the simulator, a few ``herwa bot``s.

Prints, for one run:
  - the simulator's world: build time and memory per guild (it runs in this process);
  - time to full ownership from the processes' start: every shard identified once (the
    simulator's view), every process ready with all shards connected exactly once (``/readyz``),
    every guild's GUILD_CREATE recorded in Postgres (``guilds``) and its first member-count
    snapshot taken;
  - the identify rate against the budget (``max_concurrency`` IDENTIFYs per window), the
    IDENTIFYs the simulator refused as too early, and the shards a process closed because its
    own lease renewal came too late (self-fencing, counted from the processes' logs);
  - RSS per process and per shard (marginal: above the process's RSS before it took a shard);
  - Postgres (commits, rows by table, WAL) and Redis (commands) write rates, and the CPU of
    the stores and of each bot process, with the fleet idle and at ``--rate`` gateway events/s;
  - lease churn when a process joins and when one leaves: time to converge again, shards
    moved, how the new owners opened them (RESUME or IDENTIFY), lease attempts (fence
    increments in Redis).

    .venv/bin/python benchmarks/fleet.py [--guilds 5000 --shards 32 --processes 2]
    .venv/bin/python benchmarks/fleet.py --guilds 100000 --shards 200 --processes 8 \
        --heartbeat 300 --no-churn --rate 1000

The identify window is Discord's 5 s unless ``--identify-window`` shortens it; the member
heartbeat and TTL are production's (5 s, 15 s) unless ``--heartbeat`` changes them (the TTL is
three heartbeats). Guilds are small (a few members, three channels) to keep the world in
memory; backfill is off (the world has no history) and the traffic has no slash commands.
Stores: HERWA_POSTGRES_DSN / HERWA_REDIS_URL / HERWA_CLICKHOUSE_URL if set (a throw-away
Postgres database and Redis key prefix are used), otherwise embedded ones in a temporary
directory. ClickHouse is only configured (the bot serves commands); nothing reads it here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from _stores import ServerCpu, bench_servers
from redis.asyncio import Redis

from herwa.devstack import Endpoints
from herwa.schema import migrate
from herwa.simulator import (
    GatewayConfig,
    ScenarioConfig,
    Simulator,
    SimulatorConfig,
    WorldConfig,
)

ROOT = Path(__file__).resolve().parent.parent
# Capture traffic only: slash commands would load ClickHouse, which this benchmark does not
# measure; threads are left out of the small guilds.
FAMILIES = {"message": 0.85, "edit": 0.03, "delete": 0.02, "voice": 0.07, "member": 0.03}
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SESSIONS = re.compile(r"^herwa_bot_gateway_sessions_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 if it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * _PAGE / 2**20


@dataclass
class Bot:
    """One ``herwa bot`` process, watched through its telemetry port."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    rss_before_shards: float = 0.0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    async def get(self, http: aiohttp.ClientSession, path: str) -> str:
        timeout = aiohttp.ClientTimeout(total=5)
        async with http.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return await r.text()

    async def sessions(self, http: aiohttp.ClientSession) -> Counter[str]:
        """Gateway sessions this process opened so far, by kind (identify, resume)."""
        out: Counter[str] = Counter()
        for labels, value in _SESSIONS.findall(await self.get(http, "/metrics")):
            kind = re.search(r'kind="([^"]+)"', labels)
            if kind:
                out[kind.group(1)] += int(float(value))
        return out


@dataclass
class Fleet:
    sim: Simulator
    env: dict[str, str]
    log_dir: Path
    shards: int
    bots: dict[str, Bot] = field(default_factory=dict)

    async def start(self, name: str) -> Bot:
        env = {**self.env, "HERWA_BOT_POD_NAME": name}
        log = self.log_dir / f"{name}.log"
        proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
            [sys.executable, "-m", "herwa.cli", "bot"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
        )
        bot = Bot(name, proc, log)
        self.bots[name] = bot
        assert proc.stdout is not None
        stdout = proc.stdout
        loop = asyncio.get_running_loop()
        while not bot.port:
            line = await asyncio.wait_for(loop.run_in_executor(None, stdout.readline), 120)
            if not line:
                raise RuntimeError(f"{name} exited early; see {log}")
            if line.startswith(b"HERWA_BOT_TELEMETRY_PORT="):
                bot.port = int(line.split(b"=", 1)[1])
        # Imports, settings, pools: what a process costs before its first shard.
        bot.rss_before_shards = rss_mb(proc.pid)
        return bot

    def self_fenced(self) -> int:
        """Shards the processes closed because their own lease renewal came too late."""
        total = 0
        for bot in self.bots.values():
            with contextlib.suppress(OSError):
                text = bot.log.read_text(errors="replace")
                total += text.count("not renewed for") + text.count("lost the lease of shard")
        return total

    def live(self) -> list[Bot]:
        return [b for b in self.bots.values() if b.alive]

    async def owners(self, http: aiohttp.ClientSession) -> dict[int, str] | None:
        """Shard -> the live process it is connected in, when every live process is ready and
        every shard is connected exactly once; None otherwise."""
        import orjson

        owner: dict[int, str] = {}
        for bot in self.live():
            try:
                status = orjson.loads(await bot.get(http, "/readyz"))
            except Exception:
                return None
            if not status.get("ready"):
                return None
            for s in status["shards_connected"]:
                if s in owner:
                    return None
                owner[s] = bot.name
        if len(owner) != self.shards:
            return None
        sessions = Counter(s.shard_id for s in self.sim.sessions() if s.connected)
        if any(sessions[s] != 1 for s in range(self.shards)):
            return None
        return owner

    async def converged(self, http: aiohttp.ClientSession, timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (owner := await self.owners(http)) is None:
            if time.monotonic() > deadline:
                sessions = Counter(s.shard_id for s in self.sim.sessions() if s.connected)
                once = sum(1 for s in range(self.shards) if sessions[s] == 1)
                raise RuntimeError(
                    f"no full ownership within {timeout:.0f} s: {once} of {self.shards} shards"
                    f" connected exactly once, {self.self_fenced()} shards self-fenced so far;"
                    f" logs in {self.log_dir}"
                )
            await asyncio.sleep(0.2)
        return owner

    async def sessions(self, http: aiohttp.ClientSession) -> dict[str, Counter[str]]:
        return {bot.name: await bot.sessions(http) for bot in self.live()}

    async def stop(self, bot: Bot, timeout: float = 60.0) -> None:
        if bot.alive:
            bot.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(bot.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                bot.proc.kill()
        await asyncio.to_thread(bot.proc.wait)


async def count_up_to(conn: asyncpg.Connection, table: str, want: int, deadline: float) -> int:
    """Rows in ``table`` once there are ``want`` of them (or the deadline passed)."""
    # Polling: rows committed by other processes announce nothing.
    while (n := int(await conn.fetchval(f"SELECT count(*) FROM {table}"))) < want:  # noqa: S608
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return n


async def drive(sim: Simulator, rate: float, seconds: float) -> None:
    """About ``rate`` events per second for ``seconds``, in 0.1 s ticks. What a tick could not
    emit in time is dropped, not caught up: on a loaded machine catching up would hold the
    simulator's event loop, which also serves every shard's websocket, for ever longer."""
    tick = 0.1
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        due = max(1, round(rate * tick))
        for i in range(due):
            sim.step(1)
            if i % 50 == 49:
                await asyncio.sleep(0)
                if time.monotonic() - now > tick:
                    break
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))


class IdentifyWatch:
    """When each gateway session first appears in the simulator: its IDENTIFY (a RESUME keeps
    the session id, so only IDENTIFYs are new here)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.first_seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for s in self.sim.sessions():
                self.first_seen.setdefault(s.id, now)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def since(self, t0: float) -> list[float]:
        return sorted(t for t in self.first_seen.values() if t >= t0)


@dataclass
class WriteSample:
    at: float
    pg: dict[str, int]
    wal_lsn: str
    tables: dict[str, int]
    redis_calls: dict[str, int]
    events: int
    cpu: dict[str, float]


async def sample_writes(
    conn: asyncpg.Connection, redis: Redis, sim: Simulator, cpu: list[ServerCpu]
) -> WriteSample:
    row = await conn.fetchrow(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, pg_current_wal_lsn()::text"
        " AS lsn FROM pg_stat_database WHERE datname = current_database()"
    )
    assert row is not None
    tables = {
        r["relname"]: int(r["n"])
        for r in await conn.fetch(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
        )
    }
    stats = await redis.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return WriteSample(
        time.monotonic(),
        {k: int(row[k]) for k in ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")},
        str(row["lsn"]),
        tables,
        calls,
        sum(sim.ledger.events_emitted.values()),
        {k: v for c in cpu for k, v in c.seconds().items()},
    )


def lsn_bytes(lsn: str) -> int:
    """A Postgres WAL position ('16/B374D848') as a byte offset."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def write_rates(a: WriteSample, b: WriteSample, label: str) -> dict[str, float]:
    dt = b.at - a.at
    wal = lsn_bytes(b.wal_lsn) - lsn_bytes(a.wal_lsn)
    pg = {k: (b.pg[k] - a.pg[k]) / dt for k in a.pg}
    calls = {k: (b.redis_calls.get(k, 0) - a.redis_calls.get(k, 0)) / dt for k in b.redis_calls}
    calls = {k: v for k, v in calls.items() if v > 0 and k != "info"}
    cpu = {k: (b.cpu.get(k, 0.0) - a.cpu.get(k, 0.0)) / dt for k in b.cpu}
    events = (b.events - a.events) / dt
    print(f"  {label}: {events:,.0f} gateway events/s over {dt:.0f} s")
    print(
        f"    Postgres: {pg['xact_commit']:,.1f} commits/s, {pg['tup_inserted']:,.0f} rows"
        f" inserted/s, {pg['tup_updated']:,.0f} updated/s, {pg['tup_deleted']:,.0f} deleted/s,"
        f" WAL {wal / dt / 1024:,.0f} KiB/s"
    )
    tables = {k: (v - a.tables.get(k, 0)) / dt for k, v in b.tables.items()}
    busy = sorted(((k, v) for k, v in tables.items() if v >= 0.05), key=lambda kv: -kv[1])
    print(
        "    rows written/s by table: "
        + (", ".join(f"{k} {v:,.1f}" for k, v in busy) if busy else "none")
    )
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    print(
        f"    Redis: {sum(calls.values()):,.1f} commands/s ("
        + ", ".join(f"{k} {v:,.1f}" for k, v in top)
        + ")"
    )
    if cpu:
        print("    CPU (of one core): " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(cpu.items())))
    return {"events": events, **pg, "redis": sum(calls.values())}


async def fence_total(redis: Redis, prefix: str) -> int | None:
    """Sum of every shard's lease fence: one increment per lease acquisition attempt."""
    keys = [k async for k in redis.scan_iter(match=f"{prefix}bot:fence:*", count=1000)]
    if not keys:
        return None
    return sum(int(v) for v in await redis.mget(keys) if v is not None)


def print_rss(fleet: Fleet, owner: dict[int, str], guilds_of: Counter[int]) -> None:
    print(
        "  RSS per process (MiB): before shards -> now, shards, guilds, MiB per shard above start"
    )
    per_shard: list[float] = []
    for bot in fleet.live():
        shards = [s for s, o in owner.items() if o == bot.name]
        guilds = sum(guilds_of[s] for s in shards)
        now = rss_mb(bot.proc.pid)
        marginal = (now - bot.rss_before_shards) / max(1, len(shards))
        per_shard.append(marginal)
        print(
            f"    {bot.name}: {bot.rss_before_shards:,.0f} -> {now:,.0f}, {len(shards)} shards,"
            f" {guilds:,} guilds, {marginal:.2f} MiB/shard"
            f" ({(now - bot.rss_before_shards) * 1000 / max(1, guilds):.1f} MiB per 1k guilds)"
        )
    if per_shard:
        print(f"    mean {sum(per_shard) / len(per_shard):.2f} MiB per shard above start")


async def churn(
    fleet: Fleet,
    http: aiohttp.ClientSession,
    redis: Redis,
    prefix: str,
    before: dict[int, str],
    change: str,
    act: Callable[[], Awaitable[None]],
    timeout: float,
) -> dict[int, str]:
    sessions0 = await fleet.sessions(http)
    fence0 = await fence_total(redis, prefix)
    refused0 = sum(fleet.sim.ledger.identify_refused.values())
    fenced0 = fleet.self_fenced()
    t0 = time.monotonic()
    await act()
    after = await fleet.converged(http, timeout)
    took = time.monotonic() - t0
    sessions1 = await fleet.sessions(http)
    fence1 = await fence_total(redis, prefix)
    refused = sum(fleet.sim.ledger.identify_refused.values()) - refused0
    moved = sorted(s for s in after if before.get(s) != after[s])
    # Per process: one that left took its counters with it, one that joined starts at 0.
    opened = {
        kind: sum(c[kind] - sessions0.get(n, Counter())[kind] for n, c in sessions1.items())
        for kind in ("resume", "identify")
    }
    fences = f"{fence1 - fence0}" if fence0 is not None and fence1 is not None else "n/a"
    print(
        f"  {change}: converged in {took:.1f} s; {len(moved)} of {len(after)} shards moved"
        f" (ideal {len(after) / max(1, len({*before.values(), *after.values()})):.0f});"
        f" sessions opened: RESUME {opened['resume']}, IDENTIFY {opened['identify']};"
        f" lease attempts (fence increments) {fences}; shards self-fenced"
        f" {fleet.self_fenced() - fenced0}; IDENTIFYs refused {refused}"
    )
    return after


async def run(args: argparse.Namespace, stores: Endpoints, cpu: ServerCpu) -> None:
    lo, hi = args.members
    print(
        f"fleet: {args.guilds:,} guilds, {args.shards} shards, {args.processes} processes,"
        f" max_concurrency {args.max_concurrency} per {args.identify_window} s window,"
        f" {lo}-{hi} members per guild"
    )
    rss0 = rss_mb(os.getpid())
    t = time.perf_counter()
    world = WorldConfig(
        guilds=args.guilds,
        members_per_guild=(lo, hi),
        text_channels=2,
        voice_channels=1,
        stage_channels=0,
        threads=0,
    )
    sim = Simulator(
        SimulatorConfig(
            guilds=args.guilds,
            seed=5,
            world=world,
            scenario=ScenarioConfig(seed=5, families=FAMILIES),
            record_deliveries=False,
            recommended_shards=args.shards,
            gateway=GatewayConfig(
                max_concurrency=args.max_concurrency,
                identify_window_s=args.identify_window,
                session_start_total=1_000_000,
                honour_compression=False,
            ),
        )
    )
    built = time.perf_counter() - t
    sim_mb = rss_mb(os.getpid()) - rss0
    print(
        f"  simulator world: built in {built:.1f} s, {sim_mb:,.0f} MiB"
        f" ({sim_mb * 1024 / args.guilds:.1f} KiB per guild)"
    )
    guilds_of: Counter[int] = Counter(Simulator.shard_of(g, args.shards) for g in sim.world.guilds)
    print(
        f"  guilds per shard: {min(guilds_of.values())}-{max(guilds_of.values())}"
        f" (Discord's limit 2,500)"
    )

    name = f"herwa_fleet_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stores.postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urllib.parse.urlunsplit(
        urllib.parse.urlsplit(stores.postgres_dsn)._replace(path=f"/{name}")
    )
    prefix = f"fleet{uuid.uuid4().hex[:6]}:"
    redis = Redis.from_url(stores.redis_url)
    log_dir = Path(tempfile.mkdtemp(prefix="herwa-fleet-"))
    await sim.start()
    watch = IdentifyWatch(sim)
    fleet: Fleet | None = None
    try:
        await migrate(dsn, stores.clickhouse_url)
        conn = await asyncpg.connect(dsn)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
        env.update(stores.as_env())
        env.update(sim.env())
        env.update(
            {
                "HERWA_POSTGRES_DSN": dsn,
                "HERWA_REDIS_KEY_PREFIX": prefix,
                "HERWA_DISCORD_SHARD_COUNT": str(args.shards),
                "HERWA_BOT_MAX_CONCURRENCY": str(args.max_concurrency),
                "HERWA_BOT_IDENTIFY_WINDOW_SECONDS": str(args.identify_window),
                "HERWA_BOT_MEMBER_HEARTBEAT_SECONDS": str(args.heartbeat),
                "HERWA_BOT_MEMBER_TTL_SECONDS": str(args.heartbeat * 3),
                "HERWA_BOT_BACKFILL_ENABLED": "false",
                "HERWA_TELEMETRY_PORT": "0",
                "HERWA_TELEMETRY_HOST": "127.0.0.1",
                "HERWA_TELEMETRY_LOG_LEVEL": "WARNING",
                "HERWA_POSTGRES_POOL_MAX_SIZE": "4",
                "OTEL_SDK_DISABLED": "true",
            }
        )
        fleet = Fleet(sim, env, log_dir, args.shards)
        print(f"  logs: {log_dir}")
        async with aiohttp.ClientSession() as http:
            watch.start()
            t0 = time.monotonic()
            await asyncio.gather(*(fleet.start(f"bench-{i}") for i in range(args.processes)))
            started = time.monotonic() - t0
            owner = await fleet.converged(http, args.timeout)
            t_owned = time.monotonic() - t0
            identifies = watch.since(t0)
            t_identified = identifies[-1] - t0 if identifies else float("nan")
            deadline = time.monotonic() + args.timeout
            recorded = await count_up_to(conn, "guilds", args.guilds, deadline)
            t_guilds = time.monotonic() - t0
            # Every guild's first member-count snapshot is due at once (one transaction each).
            snapshots = await count_up_to(conn, "member_count_snapshots", args.guilds, deadline)
            t_snapshots = time.monotonic() - t0
            refused = sum(sim.ledger.identify_refused.values())
            budget = args.max_concurrency / args.identify_window
            span = identifies[-1] - identifies[0] if len(identifies) > 1 else float("nan")
            rate = (len(identifies) - 1) / span if len(identifies) > 1 else float("nan")
            floor = (math.ceil(args.shards / args.max_concurrency) - 1) * args.identify_window
            print("full ownership (from starting the processes)")
            print(f"  processes up (telemetry port): {started:.1f} s")
            print(
                f"  every shard identified: {t_identified:.1f} s; all processes ready, each shard"
                f" connected once: {t_owned:.1f} s; {recorded:,} of {args.guilds:,} guilds"
                f" recorded: {t_guilds:.1f} s; {snapshots:,} member-count snapshots (one"
                f" transaction each): {t_snapshots:.1f} s"
            )
            print(
                f"  IDENTIFYs: {len(identifies)} over {span:.1f} s = {rate:.1f}/s against a budget"
                f" of {budget:.1f}/s ({rate / budget:.0%}); the budget alone needs {floor:.1f} s;"
                f" refused by the simulator: {refused}; shards self-fenced on the way:"
                f" {fleet.self_fenced()}"
            )
            print(
                f"  at Discord's 5 s window: {args.shards} shards need"
                f" {(math.ceil(args.shards / args.max_concurrency) - 1) * 5:.0f} s by the budget"
                f" (max_concurrency {args.max_concurrency})"
            )
            print_rss(fleet, owner, guilds_of)
            print(f"  simulator process: {rss_mb(os.getpid()):,.0f} MiB")

            print("write rates")
            redis_stats = Redis.from_url(stores.redis_url)
            # The servers' CPU and each bot process's.
            watched = [cpu, ServerCpu({b.name: b.proc.pid for b in fleet.live()})]
            await asyncio.sleep(2.0)  # let the last flushes settle
            a = await sample_writes(conn, redis_stats, sim, watched)
            await asyncio.sleep(args.rate_seconds)
            b = await sample_writes(conn, redis_stats, sim, watched)
            write_rates(a, b, "idle fleet")
            driver = asyncio.get_running_loop().create_task(
                drive(sim, args.rate, args.rate_seconds + 1.0)
            )
            await asyncio.sleep(1.0)
            a = await sample_writes(conn, redis_stats, sim, watched)
            await asyncio.sleep(args.rate_seconds)
            b = await sample_writes(conn, redis_stats, sim, watched)
            await driver
            write_rates(a, b, f"at --rate {args.rate:,.0f}")
            await redis_stats.aclose()

            if args.churn:
                print("lease churn")
                joiner = f"bench-{args.processes}"

                async def join() -> None:
                    await fleet.start(joiner)

                owner = await churn(fleet, http, redis, prefix, owner, "join", join, args.timeout)
                leaver = fleet.bots["bench-0"]

                async def leave() -> None:
                    await fleet.stop(leaver)

                owner = await churn(fleet, http, redis, prefix, owner, "leave", leave, args.timeout)
                ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                print(f"  peak RSS of the process that left: {ru.ru_maxrss / 1024:,.0f} MiB")
        await conn.close()
    finally:
        await watch.stop()
        if fleet is not None:
            await asyncio.gather(*(fleet.stop(b) for b in fleet.bots.values()))
        await sim.stop()
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def members(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LOW,HIGH, e.g. 2,4") from None
    if not 0 <= lo <= hi <= 200:
        raise argparse.ArgumentTypeError("expected 0 <= LOW <= HIGH <= 200")
    return lo, hi


def positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--guilds", type=positive(int), default=5_000)
    ap.add_argument("--shards", type=positive(int), default=32)
    ap.add_argument("--processes", type=positive(int), default=2, help="before one joins")
    ap.add_argument("--members", type=members, default=(2, 4), help="members per guild: LO,HI")
    ap.add_argument("--max-concurrency", type=positive(int), default=16)
    ap.add_argument(
        "--identify-window", type=positive(float), default=5.0, help="seconds (Discord's: 5)"
    )
    ap.add_argument(
        "--heartbeat", type=positive(float), default=5.0, help="membership heartbeat, s (TTL x3)"
    )
    ap.add_argument("--rate", type=positive(float), default=300.0, help="gateway events/s")
    ap.add_argument("--rate-seconds", type=positive(float), default=10.0)
    ap.add_argument("--timeout", type=positive(float), default=600.0)
    ap.add_argument(
        "--no-churn",
        dest="churn",
        action="store_false",
        help="skip the join and leave (with a long --heartbeat they take that long to notice)",
    )
    args = ap.parse_args()
    if args.guilds / args.shards > 2500:
        ap.error("more than 2,500 guilds per shard: Discord would refuse (use more --shards)")
    if args.processes < 2:
        ap.error("--processes must be at least 2 (one of them leaves)")
    with bench_servers() as (stores, cpu):
        asyncio.run(run(args, stores, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
