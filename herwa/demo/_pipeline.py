"""The demo's stages, in order: stack → … → report → shutdown. See herwa/demo/__init__.py."""

# ruff: noqa: S608 - table names in SQL come from the stores' own catalogues, never from input.

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import shutil
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from herwa import __version__, platform
from herwa.demo import _checks
from herwa.demo._bots import BotProcess, bot_env, metric_sum, parse_metrics, pod_names
from herwa.demo._checks import Check
from herwa.demo._console import Console
from herwa.devstack import DevStack, Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.operator import reconcile
from herwa.schema import migrate
from herwa.simulator import GatewayConfig, ScenarioConfig, Simulator, SimulatorConfig
from herwa.stores import clickhouse_url_client

Json = dict[str, Any]
DAY_MS = 86_400_000
REDIS_PREFIX = "herwa:"  # the bots' and the ETL's default key prefix
SHARDS = 4
BOTS = 2
# Tables the demo keeps between runs: the schema's own bookkeeping, the seeded platform, and
# the ETL's marks. A migration's seed row must survive: emptied, etl_rollup_progress once made
# the rollups skip every batch (the marks stay valid: transaction ids only grow on a server).
# tests/demo/test_clear.py checks that every table a Postgres migration inserts into is here.
KEEP_TABLES = frozenset(
    (
        "schema_migrations",
        "features",
        "tiers",
        "tier_features",
        "commands",
        "etl_runs",
        "etl_low_water",
        "etl_rollup_progress",
    )
)
# The scenario of the replayed traffic. Voice and member leaves are left out of the replay and
# driven live afterwards: Discord sends neither with a time, the bot stamps them on receipt, so
# replayed (virtual-time) voice seconds could never reconcile and replayed leaves would all be
# dated today. Joins carry their time and are replayed. Commands are left to the demo itself:
# random members running analytics commands at hundreds of events per second would only load
# the machine.
REPLAY_FAMILIES = {
    "message": 0.88,
    "edit": 0.03,
    "delete": 0.02,
    "join": 0.05,
    "thread": 0.02,
}
# (tier, commands run there): the most active guild gets everything; one free-tier guild shows
# the entitlement gate refusing a pro feature; one pro guild is entitled but left alone.
ENTITLED_TIERS = ("enterprise", "pro", "free")


@dataclass(frozen=True)
class DemoOptions:
    guilds: int
    history_days: float
    messages_per_day: int
    duration: float
    rate: float
    data_dir: Path
    results: Path
    reset: bool
    keep_running: bool
    seed: int


class DemoFailed(RuntimeError):
    """A stage could not finish; the message says what was expected."""


class Demo:
    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.stack: DevStack | None = None
        self.endpoints: Endpoints | None = None
        self.server_pids: dict[str, int] = {}
        self.sim: Simulator | None = None
        self.bots: list[BotProcess] = []
        self.pool: asyncpg.Pool | None = None
        self.redis: Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self.checks: list[Check] = []
        self.commands: list[Json] = []
        self.images: dict[str, str] = {}
        self.etl_rows: dict[str, int] = {}
        self.entitled: dict[int, str] = {}
        # guild → (UTC day, member count) when the bots took their snapshots (before traffic).
        self.snapshots: dict[int, tuple[date, int]] = {}
        self.started_at = datetime.now(UTC)
        self.bots_started = 0.0
        self.stopping = False

    # -- the stages ------------------------------------------------------------------------
    async def run(self) -> None:
        self.opts.results.mkdir(parents=True, exist_ok=True)
        self.http = aiohttp.ClientSession()
        await self._stack()
        await self._migrate()
        self.sim = self._build_simulator()
        await self._seed()
        await self._simulator()
        await self._bots()
        await self._backfill()
        await self._traffic()
        await self._flushed()
        await self._etl()
        await self._commands()

    async def _stack(self) -> None:
        opts = self.opts
        with self.console.stage("stack", "Embedded Postgres, Redis and ClickHouse") as st:
            if opts.reset and opts.data_dir.exists():
                # Stop whatever still runs from this data dir before its files go away.
                await asyncio.to_thread(DevStack(opts.data_dir).down)
                await asyncio.to_thread(shutil.rmtree, opts.data_dir)
                self.console.line(f"      reset: removed {opts.data_dir}")
            self.stack = DevStack(opts.data_dir)
            self.endpoints = await asyncio.to_thread(self.stack.up)
            status = await asyncio.to_thread(self.stack.status)
            self.server_pids = {n: s.pid for n, s in status.items() if s.pid is not None}
            st.numbers = {"data_dir": str(self.stack.data_dir), "pids": self.server_pids}
            st.summary = f"3 servers answering, data in {self.stack.data_dir}"

    async def _migrate(self) -> None:
        ep = self._ep()
        with self.console.stage("migrate", "Schema migrations") as st:
            report = await migrate(ep.postgres_dsn, ep.clickhouse_url)
            cleared = await self._clear_previous_run()
            st.numbers = {
                "applied": {k: len(v) for k, v in report.applied.items()},
                "current": dict(report.current),
                "rows_cleared": cleared,
            }
            applied = sum(len(v) for v in report.applied.values())
            st.summary = (
                f"{applied} migrations applied (Postgres v{report.current['postgres']}, "
                f"ClickHouse v{report.current['clickhouse']})"
                + (f"; cleared {cleared:,} rows of the previous run" if cleared else "")
            )

    async def _clear_previous_run(self) -> int:
        """Empty the event data of an earlier demo in this data dir, so that this run's numbers
        reconcile exactly with this run's ledger. The servers, passwords, ports, schema and
        tiers are reused; `--reset` removes the data dir instead."""
        ep = self._ep()
        cleared = 0
        conn = await asyncpg.connect(ep.postgres_dsn)
        try:
            tables = [
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
                if r["tablename"] not in KEEP_TABLES
            ]
            for t in tables:
                cleared += int(await conn.fetchval(f'SELECT count(*) FROM "{t}"'))
            if tables:
                await conn.execute(
                    "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
                )
        finally:
            await conn.close()
        ch = await clickhouse_url_client(ep.clickhouse_url)
        try:
            result = await ch.query(
                "SELECT name, total_rows FROM system.tables WHERE database = currentDatabase()"
                " AND engine NOT IN ('View', 'MaterializedView') AND NOT is_temporary"
            )
            for name, total in result.result_rows:
                if name in KEEP_TABLES:
                    continue
                cleared += int(total or 0)
                await ch.command(f"TRUNCATE TABLE `{name}`")
        finally:
            await ch.close()
        # The demo owns this Redis server: shard leases, gateway sessions, caches, counters.
        redis = Redis.from_url(ep.redis_url)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()
        return cleared

    def _build_simulator(self) -> Simulator:
        opts = self.opts
        config = SimulatorConfig(
            seed=opts.seed,
            guilds=opts.guilds,
            # Generous history rate limit: the bots read every channel's history at connect.
            history_rate=(5000, 1.0),
            record_deliveries=False,  # not needed here, and it grows with every event
            scenario=ScenarioConfig(seed=opts.seed, families=dict(REPLAY_FAMILIES)),
            gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=10_000),
        )
        return Simulator(config)

    async def _seed(self) -> None:
        ep = self._ep()
        sim = self._sim()
        with self.console.stage("seed", "Tiers, commands and subscriptions") as st:
            self.pool = await asyncpg.create_pool(ep.postgres_dsn, min_size=1, max_size=4)
            self.redis = Redis.from_url(ep.redis_url)
            rt = reconcile.Runtime(self.pool, self.redis, REDIS_PREFIX, platform.load())
            await rt.ensure_seeded()
            # The busiest guilds get subscriptions, so their charts have something to show.
            ranked = sorted(sim.world.guilds.values(), key=lambda g: -g.activity)
            outcomes: dict[str, str] = {}
            for guild, tier in zip(ranked, ENTITLED_TIERS, strict=False):
                # The operator's own reconcile path, as if a GuildSubscription had been applied.
                sub = reconcile.Subscription(
                    namespace="demo",
                    name=f"guild-{guild.id}",
                    uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"herwa-demo:{guild.id}")),
                    generation=1,
                    spec={"guildId": str(guild.id), "tier": tier},
                )
                outcome = await reconcile.reconcile(rt, sub, [], trigger="demo")
                if not outcome.ready:
                    raise DemoFailed(f"subscription for guild {guild.id}: {outcome.message}")
                self.entitled[guild.id] = tier
                outcomes[str(guild.id)] = tier
            tiers = await self.pool.fetchval("SELECT count(*) FROM tiers")
            st.numbers = {"tiers": int(tiers), "entitlements": outcomes}
            st.summary = f"{tiers} tiers; subscriptions: " + ", ".join(
                f"{t} → guild …{str(g)[-4:]}" for g, t in self.entitled.items()
            )

    async def _simulator(self) -> None:
        opts = self.opts
        sim = self._sim()
        with self.console.stage("simulator", "Discord simulator with a community") as st:
            await sim.start()
            history = sim.create_history(
                days=opts.history_days, messages_per_day=opts.messages_per_day
            )
            members = sum(len(g.members) for g in sim.world.guilds.values())
            channels = sum(len(g.channels) for g in sim.world.guilds.values())
            st.numbers = {
                "url": sim.url,
                "guilds": len(sim.world.guilds),
                "members": members,
                "channels": channels,
                "historical_messages": history,
            }
            st.summary = (
                f"{len(sim.world.guilds)} guilds, {members:,} members, {channels:,} channels, "
                f"{history:,} messages over {opts.history_days:g} days of history; {sim.url}"
            )

    async def _bots(self) -> None:
        ep, sim = self._ep(), self._sim()
        window_h = min(720.0, self.opts.history_days * 24 + 2)
        base = {
            **ep.as_env(),
            **sim.env(),
            "HERWA_BOT_BACKFILL_WINDOW_HOURS": f"{window_h:g}",
        }
        logs = self.opts.results / "logs"
        with self.console.stage("bots", f"{BOTS} bot processes sharing {SHARDS} shards") as st:
            self.bots_started = time.monotonic()
            names = pod_names(BOTS, SHARDS)
            self.bots = [BotProcess(n, bot_env(base, n, SHARDS), logs / f"{n}.log") for n in names]
            await asyncio.gather(*(b.start() for b in self.bots))
            shards = await self._wait(self._all_connected, 90, "every shard connected once")
            await self._wait(
                lambda: _true(sim.app.find_command("overview", None) is not None),
                30,
                "the command list synced by the owner of shard 0",
            )
            st.numbers = {
                b.name: {
                    "pid": b.pid,
                    "metrics": f"http://127.0.0.1:{b.port}/metrics",
                    "shards": shards[b.name],
                }
                for b in self.bots
            }
            st.summary = "; ".join(
                f"{b.name} (pid {b.pid}) shards {shards[b.name]}" for b in self.bots
            )

    async def _all_connected(self) -> dict[str, list[int]] | None:
        http = self._http()
        shards: dict[str, list[int]] = {}
        for b in self.bots:
            if not b.alive:
                raise DemoFailed(f"{b.name} exited:\n{b.tail()}")
            try:
                ready = await b.readyz(http)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None
            if not ready.get("ready") or not ready.get("shards_connected"):
                return None
            shards[b.name] = list(ready["shards_connected"])
        every = sorted(s for v in shards.values() for s in v)
        return shards if every == list(range(SHARDS)) else None

    async def _backfill(self) -> None:
        sim, pool = self._sim(), self._pool()
        expected = _checks.ledger_counts(sim).messages  # no live traffic yet: all history
        with self.console.stage("backfill", "Bots read the channel history (backfill)") as st:
            # The bots start reading history as soon as a guild is available on a shard.
            started = self.bots_started
            last = time.monotonic()

            async def done() -> bool:
                nonlocal last
                got = int(await pool.fetchval("SELECT count(*) FROM message_events"))
                snaps = int(
                    await pool.fetchval(
                        "SELECT count(DISTINCT guild_id) FROM member_count_snapshots"
                    )
                )
                if time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    rate = got / max(1e-3, last - started)
                    self.console.live(
                        f"backfilled {got:,} / {expected:,} messages "
                        f"({rate:,.0f}/s); snapshots {snaps}/{len(sim.world.guilds)}"
                    )
                return got >= expected and snaps >= len(sim.world.guilds)

            await self._wait(done, max(90.0, expected / 100), "the backfill to finish")
            today = datetime.now(UTC).date()
            self.snapshots = {g.id: (today, len(g.members)) for g in sim.world.guilds.values()}
            got = int(await pool.fetchval("SELECT count(*) FROM message_events"))
            st.numbers = {"expected": expected, "backfilled": got}
            took = time.monotonic() - started
            st.summary = (
                f"{got:,} of {expected:,} historical messages, done {took:.1f}s after "
                f"the bots started ({got / took:,.0f}/s)"
            )
            if got != expected:
                st.ok = False
                raise DemoFailed(f"backfill stored {got} messages, the ledger has {expected}")

    async def _traffic(self) -> None:
        opts, sim = self.opts, self._sim()
        now = int(time.time() * 1000)
        replay_s = opts.duration * 0.85
        speed = opts.history_days * DAY_MS / 1000 / replay_s
        title = (
            f"Live traffic: {opts.history_days:g} days replayed in {opts.duration:g}s "
            f"at ~{opts.rate:g} events/s"
        )
        with self.console.stage("traffic", title) as st:
            emitted0 = sum(sim.ledger.events_emitted.values())
            sim.start_activity(
                opts.rate, replay_from_ms=now - int(opts.history_days * DAY_MS), speed=speed
            )
            started = time.monotonic()
            captured0 = await self._captured()
            peak = 0.0
            prev_t, prev_c = started, captured0
            voice_from = started + replay_s
            voice_on = False
            while (elapsed := time.monotonic() - started) < opts.duration:
                await asyncio.sleep(min(1.0, max(0.05, opts.duration - elapsed)))
                if not voice_on and time.monotonic() >= voice_from:
                    # The replay has reached the present: from now on only voice and member
                    # churn, in real time (more messages at the present hour would dwarf the
                    # replayed weeks).
                    await sim.stop_activity()
                    voice_on = True
                    # A few leaves for certain: a short live phase may see only a step or two
                    # of member churn, all joins, and the checks compare leaves as well.
                    sim.step(3, family="leave")
                if voice_on:
                    sim.step(max(1, int(opts.rate * 0.1)), family="voice")
                    sim.step(max(1, int(opts.rate * 0.01)), family="member")
                t, c = time.monotonic(), await self._captured()
                rate = (c - prev_c) / max(1e-3, t - prev_t)
                peak = max(peak, rate)
                prev_t, prev_c = t, c
                virtual = datetime.fromtimestamp(sim.now_ms() / 1000, UTC)
                emitted = sum(sim.ledger.events_emitted.values()) - emitted0
                depth = await self._buffer_depth()
                self.console.live(
                    f"t={t - started:4.0f}s  sim clock {virtual:%Y-%m-%d %H:%M}  "
                    f"emitted {emitted:,}  captured {c - captured0:,.0f} "
                    f"({rate:,.0f} events/s)  bot buffers {depth:,} rows"
                )
            await sim.stop_activity()
            sim.end_voice_sessions()
            emitted = sum(sim.ledger.events_emitted.values()) - emitted0
            took = time.monotonic() - started
            captured = await self._captured() - captured0
            st.numbers = {
                "events_emitted": emitted,
                "gateway_events_captured": int(captured),
                "events_per_second": round(captured / took, 1),
                "peak_events_per_second": round(peak, 1),
                "replay_speed": round(speed, 1),
            }
            st.summary = (
                f"{emitted:,} events emitted, {captured:,.0f} gateway events captured "
                f"({captured / took:,.0f}/s, peak {peak:,.0f}/s)"
            )

    async def _captured(self) -> float:
        total = 0.0
        for b in self.bots:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                samples = parse_metrics(await b.metrics(self._http()))
                total += metric_sum(samples, "herwa_bot_gateway_events_total")
        return total

    async def _buffer_depth(self) -> int:
        total = 0.0
        for b in self.bots:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                samples = parse_metrics(await b.metrics(self._http()))
                total += metric_sum(samples, "herwa_bot_buffer_depth_rows")
        return int(total)

    async def _flushed(self) -> None:
        sim, pool = self._sim(), self._pool()
        with self.console.stage("capture", "Bots flushed: Postgres equals the ledger") as st:
            led = _checks.ledger_counts(sim)
            checks: list[Check] = []
            pg: _checks.PostgresCounts | None = None

            async def equal() -> bool:
                nonlocal checks, pg
                async with pool.acquire() as conn:
                    pg = await _checks.postgres_counts(conn)  # type: ignore[arg-type]
                checks = _checks.capture_checks(led, pg)
                return all(c.ok for c in checks)

            with contextlib.suppress(DemoFailed):
                await self._wait(equal, 60, "Postgres to equal the ledger", interval=0.5)
            self.checks += checks
            self._print_checks(checks)
            if pg is None:
                raise DemoFailed("Postgres could not be read")
            st.numbers = {"ledger": asdict(led), "postgres": asdict(pg)}
            st.ok = all(c.ok for c in checks)
            st.summary = (
                f"{pg.messages:,} messages ({pg.messages_backfilled:,} by backfill), "
                f"{pg.edits:,} edits, {pg.deletes:,} deletions, "
                f"{pg.joins:,}/{pg.leaves:,} joins/leaves, "
                f"{pg.voice_sessions:,} voice sessions"
            )
            if not st.ok:
                raise DemoFailed(
                    "Postgres does not equal the ledger: "
                    + "; ".join(
                        f"{c.what}: expected {c.expected} got {c.actual}"
                        for c in checks
                        if not c.ok
                    )
                )

    async def _run_etl(self) -> dict[str, int]:
        ep = self._ep()
        moved: dict[str, int] = {}
        for _ in range(100):
            result = await run_once(
                ep.postgres_dsn,
                ep.clickhouse_url,
                self.redis,
                RunOptions(redis_prefix=REDIS_PREFIX),
            )
            if result.outcome == "failed":
                raise DemoFailed(f"ETL run failed: {result.error}")
            for k, v in result.stats.rows_moved.items():
                moved[k] = moved.get(k, 0) + v
            if result.outcome == "caught_up":
                return moved
        raise DemoFailed("the ETL did not catch up in 100 runs")

    async def _etl(self) -> None:
        ep, pool = self._ep(), self._pool()
        with self.console.stage("etl", "ETL: Postgres staging → ClickHouse") as st:
            started = time.monotonic()
            moved = await self._run_etl()
            took = time.monotonic() - started
            for k, v in moved.items():
                self.etl_rows[k] = self.etl_rows.get(k, 0) + v
            async with pool.acquire() as conn:
                pg = await _checks.postgres_counts(conn)  # type: ignore[arg-type]
            ch = await clickhouse_url_client(ep.clickhouse_url)
            try:
                ch_rows = await _checks.clickhouse_rows(ch)
            finally:
                await ch.close()
            from herwa.etl.families import FAMILIES

            checks = [
                Check(
                    "etl",
                    f"{f.staging_table} → {f.target_table}",
                    pg.rows[f.staging_table],
                    ch_rows[f.target_table],
                    note=f"{moved.get(f.name, 0):,} rows loaded",
                )
                for f in FAMILIES
            ]
            self.checks += checks
            self._print_checks(checks, ("Postgres", "ClickHouse"))
            total = sum(moved.values())
            st.numbers = {
                "rows_loaded": moved,
                "clickhouse_rows": ch_rows,
                "rows_per_second": round(total / max(took, 1e-3)),
            }
            st.ok = all(c.ok for c in checks)
            st.summary = f"{total:,} rows loaded ({total / max(took, 1e-3):,.0f} rows/s)"
            if not st.ok:
                raise DemoFailed("ClickHouse does not equal Postgres")

    async def _commands(self) -> None:
        sim, ep = self._sim(), self._ep()
        opts = self.opts
        days = max(1, math.ceil(opts.history_days) + 1)
        weeks = min(12, max(1, math.ceil(days / 7) + 1))
        top = next(g for g, t in self.entitled.items() if t == "enterprise")
        free = next((g for g, t in self.entitled.items() if t == "free"), None)
        plan: list[tuple[int, str, list[Json]]] = [
            (top, "overview", [_int("days", days)]),
            (top, "heatmap", [_int("days", days)]),
            (top, "retention", [_int("weeks", weeks)]),
            (top, "growth", [_int("days", days)]),
        ]
        if free is not None:
            plan.append((free, "growth", [_int("days", days)]))
        with self.console.stage("commands", "Slash commands through the simulator") as st:
            ok = True
            answers: list[Check] = []
            for guild, name, options in plan:
                started = time.monotonic()
                result = await sim.invoke_command(
                    guild, name, options, timeout=90, include_bytes=True
                )
                took = time.monotonic() - started
                entry = self._save_reply(guild, name, result, took)
                self.commands.append(entry)
                entitled = self.entitled[guild] != "free"
                expect_image = name != "overview" and entitled
                good = bool(entry["complete"]) and (bool(entry["files"]) == expect_image)
                ok = ok and good
                mark = "✓" if good else "✗"
                self.console.line(
                    f"      {mark} /{name} in {self.entitled[guild]}-tier guild …{str(guild)[-4:]}"
                    f" ({took:.1f}s): {entry['summary']}"
                )
                if entitled:
                    answers += self._answer_checks(guild, name, entry, weeks)
            # What members see, number by number, against the ledger.
            self.checks += answers
            self._print_checks(answers, ("ledger", "reply"))
            ok = ok and all(c.ok for c in answers)
            # The invocations reach ClickHouse through the usage counters the ETL drains.
            moved = await self._run_etl()
            for k, v in moved.items():
                self.etl_rows[k] = self.etl_rows.get(k, 0) + v
            ch = await clickhouse_url_client(ep.clickhouse_url)
            try:
                recorded = await _checks.command_invocations(ch)
            finally:
                await ch.close()
            led = _checks.ledger_counts(sim)
            check = Check(
                "commands", "command invocations (usage → ClickHouse)", led.commands, recorded
            )
            self.checks.append(check)
            self._print_checks([check], ("ledger", "ClickHouse"))
            st.numbers = {"invoked": len(plan), "images": dict(self.images)}
            st.ok = ok and check.ok
            st.summary = f"{len(plan)} commands answered, {len(self.images)} charts saved"
            if not st.ok:
                raise DemoFailed("a slash command did not answer as expected")

    def _answer_checks(self, guild: int, name: str, entry: Json, weeks: int) -> list[Check]:
        sim, text = self._sim(), str(entry["text"])
        try:
            if name == "overview":
                return _checks.overview_checks(sim, guild, entry["fields"], text)
            if name == "heatmap":
                return _checks.heatmap_checks(sim, guild, text)
            if name == "retention":
                return _checks.retention_checks(sim, guild, text, weeks)
            if name == "growth":
                return _checks.growth_checks(sim, guild, text, self.snapshots[guild])
        except _checks.ReplyUnreadable as exc:
            return [Check("commands", f"/{name} reply readable", 1, 0, note=str(exc))]
        raise DemoFailed(f"no check for /{name}")

    def _save_reply(self, guild: int, name: str, result: Json, took: float) -> Json:
        messages = [m for m in [result.get("original"), *result.get("followups", [])] if m]
        files: list[str] = []
        texts: list[str] = []
        fields: dict[str, str] = {}
        for m in messages:
            if m.get("content"):
                texts.append(m["content"])
            for e in m.get("embeds", []):
                texts += [e.get(k, "") for k in ("title", "description") if e.get(k)]
                for f in e.get("fields", []):
                    fields[f["name"]] = f["value"]
            for a in m.get("attachments", []):
                data = a.get("data_base64")
                if not data or not str(a.get("filename", "")).endswith(".png"):
                    continue
                raw = base64.b64decode(data)
                width, height = png_ok(raw)  # a chart that does not decode fails the stage
                target = self.opts.results / f"{name}.png"
                target.write_bytes(raw)
                texts.append(f"{target.name}: {width}x{height} PNG")
                files.append(target.name)
                self.images[name] = target.name
        summary = texts[0].splitlines()[0] if texts else ""
        if fields:
            summary = ", ".join(f"{k} {v}" for k, v in list(fields.items())[:4])
        if files:
            summary = (summary + "; " if summary else "") + f"saved {', '.join(files)}"
        return {
            "command": name,
            "guild_id": str(guild),
            "tier": self.entitled[guild],
            "seconds": round(took, 2),
            "complete": bool(result.get("complete")),
            "text": "\n".join(texts),
            "fields": fields,
            "files": files,
            "summary": summary[:160],
        }

    def _print_checks(
        self, checks: list[Check], columns: tuple[str, str] = ("ledger", "Postgres")
    ) -> None:
        width = max((len(c.what) for c in checks), default=10)
        self.console.line(f"      {'':<{width}}  {columns[0]:>12}  {columns[1]:>12}")
        for c in checks:
            tol = f"  (±{c.tolerance:g})" if c.tolerance else ""
            self.console.line(
                f"      {c.what:<{width}}  {_num(c.expected):>12}  "
                f"{_num(c.actual):>12}  {'✓' if c.ok else '✗'}{tol}"
            )

    # -- keep running ----------------------------------------------------------------------
    async def explore(self) -> None:
        """Leave everything up, with gentle live traffic and an ETL run every 15 s."""
        ep, sim = self._ep(), self._sim()
        self.console.line("")
        self.console.line("Everything keeps running (Ctrl-C stops it all):")
        for line in self.endpoint_lines(ep, sim):
            self.console.line(f"  {line}")
        sim.start_activity(min(self.opts.rate, 20.0))
        while True:
            await asyncio.sleep(15)
            moved = await self._run_etl()
            self.console.live(
                f"{datetime.now():%H:%M:%S} ETL loaded {sum(moved.values()):,} new rows"
            )

    def endpoint_lines(self, ep: Endpoints, sim: Simulator) -> list[str]:
        ch_port = ep.clickhouse_native_port
        # Loopback-only servers with generated passwords: printing them is what makes the
        # endpoints usable from another terminal (they are in the data dir's secrets.json too).
        creds = urllib.parse.urlsplit(ep.clickhouse_url)
        return [
            f"Postgres     {ep.postgres_dsn}",
            f"Redis        {ep.redis_url}",
            f"ClickHouse   {ep.clickhouse_url}  (read-only: {ep.clickhouse_readonly_url})",
            f"clickhouse-client --host 127.0.0.1 --port {ch_port} --user {creds.username} "
            f"--password {creds.password} --database {creds.path.strip('/')}",
            f"Simulator    {sim.url}/_sim/ledger  (control API under /_sim/)",
            *(f"{b.name:<12} http://127.0.0.1:{b.port}/metrics" for b in self.bots),
            "Grafana      add a ClickHouse datasource with the URL above "
            "(dashboards in charts/herwa/dashboards)",
        ]

    # -- shutdown --------------------------------------------------------------------------
    async def shutdown(self) -> Json:
        """Stop bots (SIGTERM: they flush and exit 0), the simulator, then the stack."""
        self.stopping = True
        out: Json = {"bots": {}, "servers_stopped": False}
        codes = await asyncio.gather(*(b.stop() for b in self.bots), return_exceptions=True)
        for b, code in zip(self.bots, codes, strict=True):
            out["bots"][b.name] = {
                "pid": b.pid,
                "exit_code": code if isinstance(code, int) else repr(code),
            }
        if self.http is not None:
            await self.http.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
        if self.sim is not None and self.sim.url:
            with contextlib.suppress(Exception):
                await self.sim.stop()
        if self.stack is not None:
            await asyncio.to_thread(self.stack.down)
            out["servers_stopped"] = True
        elif self.opts.data_dir.exists():
            # Interrupted while the stack was starting: whatever it started is in its state.
            await asyncio.to_thread(DevStack(self.opts.data_dir).down)
            out["servers_stopped"] = True
        if not self.server_pids and (self.opts.data_dir / "state.json").exists():
            self.server_pids = {}
        pids = {f"bot {b.name}": b.pid for b in self.bots if b.pid is not None}
        pids.update({f"server {n}": p for n, p in self.server_pids.items()})
        out["pids"] = pids
        out["left_running"] = sorted(k for k, p in pids.items() if pid_running(p))
        return out

    # -- helpers ---------------------------------------------------------------------------
    async def _wait(self, pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(interval)

    def _ep(self) -> Endpoints:
        if self.endpoints is None:
            raise RuntimeError("endpoints used before its stage ran")
        return self.endpoints

    def _sim(self) -> Simulator:
        if self.sim is None:
            raise RuntimeError("sim used before its stage ran")
        return self.sim

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("pool used before its stage ran")
        return self.pool

    def _http(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("http used before its stage ran")
        return self.http

    def version(self) -> str:
        return __version__


def pid_running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie has exited and counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _true(value: bool) -> bool:
    return value


def _int(name: str, value: int) -> Json:
    return {"name": name, "type": 4, "value": value}


def _num(value: float) -> str:
    return f"{value:,.3f}" if value != int(value) else f"{int(value):,}"


def png_ok(data: bytes) -> tuple[int, int]:
    """Decode a PNG fully (Pillow); returns its size or raises."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size
