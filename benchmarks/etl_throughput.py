"""ETL throughput: Postgres staging → ClickHouse committed, beside the raw ceilings.

Usage: ``python benchmarks/etl_throughput.py [--rows 1000000] [--batch-rows B]
[--compare-batch-rows C ...]`` (B: the ETL's default batch size unless given); uses
HERWA_POSTGRES_DSN / HERWA_CLICKHOUSE_URL where set, embedded servers otherwise. Creates
throw-away databases, stages N message events, then measures on the same machine:

1. COPY out of Postgres alone (the same SELECT the ETL renders, by message id, no claim);
2. bulk insert into ClickHouse alone (those bytes, same batch size, format, settings, schema);
3. the push ETL's claims alone (bound, COPY, batch record), committed, nothing loaded: the
   Postgres half of the push transfer; and, against embedded servers, ClickHouse reading the
   same rows from Postgres itself through its postgresql() table function alone, the insert
   included: what the pull transfer does in place of both;
4. ``herwa etl run`` end to end: claim + insert + rollup recompute + batch record + commit,
   pipelined (claim of batch N+1 overlapping the insert of batch N) with the default transfer
   (ClickHouse pulls each batch) and, each on a freshly staged copy, pipelined with the push
   transfer (the ETL copies each batch through) and serial (pull); with
   ``--compare-batch-rows C``, pipelined with batches of C rows too. The serial run is split
   by stage (claim, insert, batch record, rollup recompute, …: each process's CPU between the
   run's step hooks, which run one at a time when unpipelined), followed by the cleanup pass a
   later run makes for these rows.

The targets (issue 19) are printed beside the figures, and a last line says whether the
pipelined ETL met them in this run: ``target met: yes|no``.

Beside each path's wall time it prints the CPU seconds it cost Postgres and ClickHouse (when
embedded) and this process: their sum over the machine's cores is a floor on the wall time no
amount of overlap can beat.
"""

# ruff: noqa: S608 - benchmark SQL is composed from its own constants and integers.

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import uvloop
from _stores import ServerCpu, bench_servers

from herwa.config import Transfer
from herwa.etl import cleanup
from herwa.etl.families import BY_NAME, INSERT_SETTINGS, WIRE_FORMAT, Family
from herwa.etl.low_water import load_cursors, record_batch
from herwa.etl.runner import RunOptions, run_once
from herwa.etl.sync import claim, opt_out_horizon, prepare_session, rendered_columns
from herwa.schema import migrate
from herwa.stores import clickhouse_url_client

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

_STAGING_TRANSACTION = 5_000  # the bot's flush limit
# Issue 19: the pipelined ETL, side by side with the raw ceilings of the same run.
_TARGET_ROWS_PER_SECOND = 300_000
_TARGET_SHARE_OF_CEILING = 0.5


@dataclass
class _Use:
    wall: float
    cpu: dict[str, float]  # CPU seconds: postgres, clickhouse (embedded only), etl (this process)


class _Meter:
    """Wall time and CPU time of each measured path, side by side."""

    def __init__(self, servers: ServerCpu) -> None:
        self._servers = servers
        self.uses: dict[str, _Use] = {}
        self.stages: dict[str, dict[str, float]] = {}

    def cpu(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {**self._servers.seconds(), "etl": own.ru_utime + own.ru_stime}

    @contextmanager
    def span(self, key: str) -> Iterator[None]:
        cpu, t = self.cpu(), time.perf_counter()
        yield
        wall, after = time.perf_counter() - t, self.cpu()
        self.uses[key] = _Use(wall, {k: after[k] - cpu[k] for k in after if k in cpu})


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def _stage(base_pg: str, base_ch: str, rows: int, guilds: int) -> tuple[str, str, str]:
    name = f"herwa_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base_pg)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    pg_dsn, ch_url = _with_db(base_pg, name), _with_db(base_ch, name)
    await migrate(pg_dsn, ch_url)
    pg = await asyncpg.connect(pg_dsn)
    try:
        # Snowflake-like: ids and created_at rise together, ~30 days of traffic. Staged like the
        # bot stages, in transactions of at most 5,000 rows (a claim takes whole transactions).
        for lo in range(0, rows, _STAGING_TRANSACTION):
            hi = min(rows, lo + _STAGING_TRANSACTION)
            await pg.execute(
                f"""
                INSERT INTO message_events (message_id, guild_id, channel_id, thread_id,
                                            author_id, created_at, kind, is_bot)
                SELECT 1000000000000 + g, 1 + g % {guilds}, 100 + g % 37,
                       CASE WHEN g % 10 = 0 THEN 5000 + g % 7 END,
                       10000 + (g::bigint * 7919) % 5000,
                       timestamptz '2024-01-01 00:00Z' + g * (interval '30 days' / {rows}),
                       (ARRAY['text','attachment','embed','reply'])[1 + g % 4], g % 50 = 0
                FROM generate_series({lo + 1}, {hi}) g
                """
            )
        await pg.execute("VACUUM ANALYZE message_events")
        # Every variant starts from the same WAL state (full-page images after a checkpoint).
        await pg.execute("CHECKPOINT")
    finally:
        await pg.close()
    return name, pg_dsn, ch_url


async def _quiet(pg_dsn: str, ch_url: str) -> float:
    """Wait (up to two minutes) until no server works in the background: no ClickHouse merge or
    mutation (the previous variant's tables included) and no Postgres autovacuum worker.
    Returns the seconds waited: each variant is timed on its own work alone."""
    t = time.perf_counter()
    pg = await asyncpg.connect(pg_dsn)
    ch = await clickhouse_url_client(ch_url)
    try:
        for _ in range(240):
            busy = await ch.command(
                "SELECT (SELECT count() FROM system.merges)"
                " + (SELECT count() FROM system.mutations WHERE NOT is_done)"
            )
            vacuums = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            if not busy and not vacuums:
                break
            await asyncio.sleep(0.5)
    finally:
        await ch.close()
        await pg.close()
    return time.perf_counter() - t


async def _drop(base_pg: str, base_ch: str, name: str) -> None:
    admin = await asyncpg.connect(base_pg)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    ch = await clickhouse_url_client(_with_db(base_ch, "default"))
    try:
        await ch.command(f"DROP DATABASE IF EXISTS {name}")
    finally:
        await ch.close()


async def _ceilings(
    meter: _Meter, pg_dsn: str, ch_url: str, rows: int, batch_rows: int, pull: bool
) -> None:
    pg = await asyncpg.connect(pg_dsn)
    ch = await clickhouse_url_client(ch_url)
    try:
        family = BY_NAME["message_events"]
        # 1. Raw ceiling: COPY out of Postgres alone, in batches of the same size.
        await prepare_session(pg)
        chunks: list[bytes] = []
        with meter.span("copy"):
            for lo in range(0, rows, batch_rows):
                parts: list[bytes] = []

                async def collect(chunk: bytes, parts: list[bytes] = parts) -> None:
                    parts.append(chunk)  # a coroutine sink, as the ETL's (no thread per chunk)

                await pg.copy_from_query(
                    f"SELECT {rendered_columns(family, lo + 1)} FROM message_events"
                    f" WHERE message_id > {1000000000000 + lo}"
                    f" AND message_id <= {1000000000000 + lo + batch_rows} ORDER BY message_id",
                    output=collect,
                    format="text",
                )
                chunks.append(b"".join(parts))

        # 2. Raw ceiling: bulk insert of those bytes into ClickHouse alone.
        await ch.command("CREATE TABLE ceiling AS messages")
        with meter.span("insert"):
            for chunk in chunks:
                await ch.raw_insert(
                    "ceiling",
                    family.target_columns,
                    insert_block=chunk,
                    fmt=WIRE_FORMAT,
                    settings=INSERT_SETTINGS,
                )
        assert await ch.command("SELECT count() FROM ceiling") == rows
        if pull:
            await _pull(meter, pg, ch, pg_dsn, rows, batch_rows)
    finally:
        await pg.close()
        await ch.close()


async def _pull(
    meter: _Meter,
    pg: asyncpg.Connection,
    ch: AsyncClient,
    pg_dsn: str,
    rows: int,
    batch_rows: int,
) -> None:
    """ClickHouse reads the rendered rows from Postgres itself (postgresql() table function over
    a view), so no row passes through this process: the pull transfer's data path alone. Only
    against embedded servers, whose CPU time can be read."""
    family = BY_NAME["message_events"]
    await pg.execute(
        f"CREATE VIEW ceiling_rows AS SELECT {rendered_columns(family, 1)} FROM message_events"
    )
    await ch.command("CREATE TABLE pulled AS messages")
    dsn = urllib.parse.urlsplit(pg_dsn)
    source = (
        f"postgresql('{dsn.hostname}:{dsn.port}', '{dsn.path[1:]}', 'ceiling_rows',"
        f" '{dsn.username}', '{dsn.password}')"
    )
    columns = ", ".join(family.target_columns)
    with meter.span("pull"):
        for lo in range(0, rows, batch_rows):
            await ch.command(
                f"INSERT INTO pulled ({columns}) SELECT {columns} FROM {source}"
                f" WHERE message_id > {1000000000000 + lo}"
                f" AND message_id <= {1000000000000 + lo + batch_rows}",
                settings=INSERT_SETTINGS,
            )
    assert await ch.command("SELECT count() FROM pulled") == rows


async def _claims(meter: _Meter, pg_dsn: str, rows: int, batch_rows: int) -> None:
    """The Postgres half of the push transfer alone: every claim (COPY out included) and batch
    record, committed, no load."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        await prepare_session(pg)
        cursor = (await load_cursors(pg))["message_events"]
        claimed_rows = 0
        with meter.span("claims"):
            horizon = await opt_out_horizon(pg)  # as a run does before its purges
            while not cursor.caught_up:
                claimed = await claim(pg, cursor, batch_rows, horizon)  # push: COPY out
                await record_batch(pg, cursor.family, claimed.bounds, claimed.rows, None)
                assert claimed.tx is not None  # push leaves it open
                await claimed.tx.commit()
                claimed_rows += claimed.rows
        assert claimed_rows == rows
    finally:
        await pg.close()


_STAGE_ORDER = (
    "claim (and the run's start: schema check, privacy, purges)",
    "insert",
    "record",
    "rollup recompute",
    "run end (queue, cleanup pass, expiry, lag)",
    "cleanup, later run (rows past retention)",
)


class _Stages:
    """CPU per stage and process of a serial run, sampled at the run's step hooks (sync.py's
    fault points): unpipelined, each step runs alone, so the deltas between samples are its."""

    # A sample at a hook closes the stage that ran since the previous sample.
    # The first claim has no hook before it: it shares its row with the run's start.
    _CLOSES = {"claimed": _STAGE_ORDER[0], "inserted": "insert", "before_commit": "record"}

    def __init__(self, meter: _Meter) -> None:
        self._meter = meter
        self.cpu: dict[str, dict[str, float]] = {}
        self._last = meter.cpu()

    def _close(self, stage: str) -> None:
        now = self._meter.cpu()
        spent = self.cpu.setdefault(stage, dict.fromkeys(now, 0.0))
        for k in now:
            spent[k] += now[k] - self._last.get(k, now[k])
        self._last = now

    async def hook(self, point: str, family: Family) -> None:
        del family
        if point == "rolled_up":
            # From the last batch's record: its commit, the buckets' discovery, the recompute.
            self._close("rollup recompute")
        else:
            # A claim's row holds the commit of the batch before it too.
            self._close(self._CLOSES[point])

    def finish(self) -> None:
        self._close("run end (queue, cleanup pass, expiry, lag)")


async def _etl(
    meter: _Meter,
    pg_dsn: str,
    ch_url: str,
    rows: int,
    batch_rows: int,
    pipeline: bool,
    key: str,
    transfer: Transfer,
) -> None:
    options = RunOptions(
        batch_rows=batch_rows, deadline_seconds=3600, pipeline=pipeline, transfer=transfer
    )
    stages = None if pipeline else _Stages(meter)
    with meter.span(key):
        result = await run_once(
            pg_dsn, ch_url, None, options, fault=None if stages is None else stages.hook
        )
    assert result.outcome == "caught_up", result.error
    if stages is not None:
        stages.finish()
        # What a later run's cleanup pass costs for these rows (this run's kept them: they
        # were loaded within the retention).
        pg = await asyncpg.connect(pg_dsn)
        try:
            with meter.span("cleanup"):
                cleaned = await cleanup.cleanup(pg, datetime.now(UTC))
        finally:
            await pg.close()
        assert cleaned["message_events"] == rows, cleaned
        stages.cpu["cleanup, later run (rows past retention)"] = meter.uses["cleanup"].cpu
        meter.stages = stages.cpu
    assert result.stats.rows_moved["message_events"] == rows
    ch = await clickhouse_url_client(ch_url)
    try:
        assert await ch.command("SELECT count() FROM messages FINAL") == rows
        assert await ch.command("SELECT sum(messages) FROM message_activity_hourly FINAL") == rows
        for rollup in ("message_activity_author_days", "message_activity_weekly"):
            sql = f"SELECT sum(messages) FROM {rollup} FINAL"
            assert await ch.command(sql) == rows, rollup
    finally:
        await ch.close()


async def main(
    servers: ServerCpu,
    base_pg: str,
    base_ch: str,
    rows: int,
    batch_rows: int,
    guilds: int,
    compare: list[int],
) -> None:
    meter = _Meter(servers)
    # Each ETL variant gets a freshly staged database: a loaded table is not the same table.
    others = [f"pipelined@{n}" for n in compare]
    for variant in ("ceilings", "claims", "pipelined", "push", *others, "serial"):
        print(f"{variant}: staging {rows:,} message events across {guilds} guilds …", flush=True)
        name, pg_dsn, ch_url = await _stage(base_pg, base_ch, rows, guilds)
        try:
            waited = await _quiet(pg_dsn, ch_url)
            print(f"  servers quiet after {waited:.1f}s", flush=True)
            if variant == "ceilings":
                embedded = {"postgres", "clickhouse"} <= servers.seconds().keys()
                await _ceilings(meter, pg_dsn, ch_url, rows, batch_rows, embedded)
            elif variant == "claims":
                await _claims(meter, pg_dsn, rows, batch_rows)
            elif variant == "push":
                await _etl(meter, pg_dsn, ch_url, rows, batch_rows, True, variant, "push")
            else:
                pipeline, _, other = variant.partition("@")
                size = int(other) if other else batch_rows
                pipelined = pipeline == "pipelined"
                await _etl(meter, pg_dsn, ch_url, rows, size, pipelined, variant, "pull")
        finally:
            await _drop(base_pg, base_ch, name)

    uses = meter.uses
    rate = {k: rows / use.wall for k, use in uses.items()}
    slower = min(rate["copy"], rate["insert"])
    cores = os.cpu_count() or 1
    print(f"\nrows: {rows:,}   batch: {batch_rows:,}   guilds: {guilds}   cores: {cores}")
    # CPU seconds per server: what the path costs the machine, whatever overlapped.
    servers_seen = [k for k in ("postgres", "clickhouse") if k in uses["copy"].cpu]
    cpu_heads = "".join(f"{k[:10]:>11}" for k in [*servers_seen, "etl"])
    print(f"{'path':<52}{'seconds':>9}{'rows/s':>12}{'/ceiling':>10}  | CPU s:{cpu_heads}")
    for key, label in (
        ("copy", "COPY out of Postgres alone"),
        ("insert", "bulk insert into ClickHouse alone (TSV)"),
        ("claims", "push: the ETL's claims alone (nothing loaded)"),
        ("pull", "pull: ClickHouse pulls (postgresql()), alone"),
        ("pipelined", "ETL pipelined, pull: claim | pull, rollups, record"),
        ("push", "ETL pipelined, push: claim | insert, rollups, record"),
        ("serial", "ETL serial, pull: claim, pull, rollups, record"),
        *((key, f"ETL pipelined, batches of {key[10:]} rows") for key in others),
    ):
        if key not in uses:
            continue
        use = uses[key]
        cpu = "".join(f"{use.cpu[k]:>11.2f}" for k in [*servers_seen, "etl"])
        print(
            f"{label:<52}{use.wall:>9.2f}{rate[key]:>12,.0f}{rate[key] / slower:>10.0%}"
            f"  |       {cpu}"
        )
    if meter.stages:
        print(f"\nCPU s per stage, serial run (per {rows:,} rows){'':<16}| CPU s:{cpu_heads}")
        for stage, spent in sorted(meter.stages.items(), key=lambda s: _STAGE_ORDER.index(s[0])):
            cpu = "".join(f"{spent.get(k, 0.0):>11.2f}" for k in [*servers_seen, "etl"])
            print(f"{stage:<73}|       {cpu}")
    etl_cpu = sum(uses["pipelined"].cpu[k] for k in [*servers_seen, "etl"])
    etl_rate, share = rate["pipelined"], rate["pipelined"] / slower
    met = etl_rate >= _TARGET_ROWS_PER_SECOND and share >= _TARGET_SHARE_OF_CEILING
    print(
        f"\nETL (pipelined, pull): {etl_rate:,.0f} rows/s (target >= {_TARGET_ROWS_PER_SECOND:,})"
        f" = {share:.0%} of the slower raw ceiling, {slower:,.0f} rows/s"
        f" (target >= {_TARGET_SHARE_OF_CEILING:.0%})\n"
        f"ETL (pipelined, pull) CPU: {etl_cpu:.2f} s over the measured processes = at least "
        f"{etl_cpu / cores:.2f} s of wall time on {cores} cores, i.e. at most "
        f"{rows * cores / etl_cpu:,.0f} rows/s with perfect overlap"
        + ("" if servers_seen else " (servers not embedded: their CPU is not counted)")
    )
    print(f"target met: {'yes' if met else 'no'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=RunOptions().batch_rows)
    parser.add_argument(
        "--compare-batch-rows",
        type=int,
        action="append",
        default=[],
        help="also run the pipelined ETL with batches of this many rows (repeatable)",
    )
    parser.add_argument("--guilds", type=int, default=50)
    args = parser.parse_args()
    with bench_servers() as (stores, servers):
        # The event loop `herwa etl run` uses (etl/cli.py), for the ceilings too.
        uvloop.run(
            main(
                servers,
                stores.postgres_dsn,
                stores.clickhouse_url,
                args.rows,
                args.batch_rows,
                args.guilds,
                args.compare_batch_rows,
            )
        )
