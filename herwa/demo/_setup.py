"""The stages that set the scene: the embedded stack, the schema (emptied of an earlier run's
events), the tiers and subscriptions, and the simulator with its community and history."""

# ruff: noqa: S608 - table names in SQL come from the stores' own catalogues, never from input.

from __future__ import annotations

import asyncio
import shutil
import uuid

import asyncpg
from redis.asyncio import Redis

from herwa import platform
from herwa.demo._run import REDIS_PREFIX, DemoFailed, DemoOptions, DemoRun
from herwa.devstack import DevStack, Endpoints
from herwa.operator import reconcile
from herwa.schema import migrate as apply_migrations
from herwa.simulator import (
    GatewayConfig,
    ScenarioConfig,
    ShowcaseConfig,
    Simulator,
    SimulatorConfig,
    WorldConfig,
)
from herwa.stores import clickhouse_url_client

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


async def stack(run: DemoRun) -> None:
    opts = run.opts
    with run.console.stage("stack", "Embedded Postgres, Redis and ClickHouse") as st:
        if opts.reset and opts.data_dir.exists():
            # Stop whatever still runs from this data dir before its files go away.
            await asyncio.to_thread(DevStack(opts.data_dir).down)
            await asyncio.to_thread(shutil.rmtree, opts.data_dir)
            run.console.line(f"      reset: removed {opts.data_dir}")
        run.stack = DevStack(opts.data_dir)
        run.endpoints = await asyncio.to_thread(run.stack.up)
        status = await asyncio.to_thread(run.stack.status)
        run.server_pids = {n: s.pid for n, s in status.items() if s.pid is not None}
        st.numbers = {"data_dir": str(run.stack.data_dir), "pids": run.server_pids}
        st.summary = f"3 servers answering, data in {run.stack.data_dir}"


async def migrate(run: DemoRun) -> None:
    ep = run.require_ep()
    with run.console.stage("migrate", "Schema migrations") as st:
        report = await apply_migrations(ep.postgres_dsn, ep.clickhouse_url)
        cleared = await clear_previous_run(ep)
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


async def clear_previous_run(ep: Endpoints) -> int:
    """Empty the event data of an earlier demo in this data dir, so that this run's numbers
    reconcile exactly with this run's ledger. The servers, passwords, ports, schema and
    tiers are reused; `--reset` removes the data dir instead."""
    cleared = 0
    conn = await asyncpg.connect(ep.postgres_dsn)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
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


def build_simulator(opts: DemoOptions) -> Simulator:
    showcase = ShowcaseConfig(members=opts.showcase_members) if opts.showcase_members else None
    config = SimulatorConfig(
        seed=opts.seed,
        guilds=opts.guilds,
        world=WorldConfig(guilds=opts.guilds, showcase=showcase),
        # Generous history rate limit: the bots read every channel's history at connect.
        history_rate=(5000, 1.0),
        record_deliveries=False,  # not needed here, and it grows with every event
        scenario=ScenarioConfig(seed=opts.seed, families=dict(REPLAY_FAMILIES)),
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=10_000),
    )
    return Simulator(config)


async def seed(run: DemoRun) -> None:
    ep = run.require_ep()
    sim = run.require_sim()
    with run.console.stage("seed", "Tiers, commands and subscriptions") as st:
        run.pool = await asyncpg.create_pool(ep.postgres_dsn, min_size=1, max_size=4)
        run.redis = Redis.from_url(ep.redis_url)
        rt = reconcile.OperatorRuntime(run.pool, run.redis, REDIS_PREFIX, platform.load())
        await rt.ensure_seeded()
        # The busiest guilds get subscriptions, so their charts have something to show; the
        # showcase server, when there is one, gets everything.
        ranked = sorted(sim.world.guilds.values(), key=lambda g: -g.activity)
        if sim.world.showcase is not None:
            ranked.remove(sim.world.showcase)
            ranked.insert(0, sim.world.showcase)
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
            run.entitled[guild.id] = tier
            outcomes[str(guild.id)] = tier
        tiers = await run.pool.fetchval("SELECT count(*) FROM tiers")
        st.numbers = {"tiers": int(tiers), "entitlements": outcomes}
        st.summary = f"{tiers} tiers; subscriptions: " + ", ".join(
            f"{t} → guild …{str(g)[-4:]}" for g, t in run.entitled.items()
        )


async def start_simulator(run: DemoRun) -> None:
    opts = run.opts
    sim = run.require_sim()
    with run.console.stage("simulator", "Discord simulator with a community") as st:
        await sim.start()
        history = sim.create_history(
            days=opts.history_days,
            messages_per_day=opts.messages_per_day,
            showcase_per_day=opts.showcase_messages_per_day,
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
        showcase = sim.world.showcase
        if showcase is not None:
            st.numbers["showcase"] = {
                "guild_id": str(showcase.id),
                "members": len(showcase.members),
                "timezone": showcase.timezone,
                "historical_messages": sim.ledger.guilds[showcase.id].messages.total(),
            }
            st.summary += (
                f"; showcase server …{str(showcase.id)[-4:]}: {len(showcase.members):,} members, "
                f"{sim.ledger.guilds[showcase.id].messages.total():,} of those messages"
            )
