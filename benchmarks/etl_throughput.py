"""ETL throughput: Postgres staging → ClickHouse committed, beside the raw ceilings.

Usage: ``python benchmarks/etl_throughput.py [--rows 1000000] [--batch-rows 100000]``; uses
HERWA_POSTGRES_DSN / HERWA_CLICKHOUSE_URL where set, embedded servers otherwise. Creates
throw-away databases, stages N message events, then measures on the same machine:

1. COPY out of Postgres alone (the same SELECT the ETL renders, no claim, no mark);
2. bulk insert into ClickHouse alone (those bytes, same batch size, format, settings, schema);
3. the ETL's claim-and-mark statements alone, committed, nothing loaded: the Postgres half of
   the ETL, which the ETL can only beat by running it beside the ClickHouse half on other cores;
4. ``herwa etl run`` end to end: claim + mark + insert + rollup recompute + commit, pipelined
   (claim of batch N+1 overlapping the insert of batch N) and, on a freshly staged copy, serial.
"""

# ruff: noqa: S608 - benchmark SQL is composed from its own constants and integers.

from __future__ import annotations

import argparse
import time
import urllib.parse
import uuid

import asyncpg
import uvloop
from _stores import bench_stores

from herwa.etl.families import BY_NAME, INSERT_SETTINGS, WIRE_FORMAT
from herwa.etl.low_water import load_cursors
from herwa.etl.runner import RunOptions, run_once
from herwa.etl.sync import claim, prepare_session, rendered_columns
from herwa.schema import migrate
from herwa.stores import clickhouse_url_client

_STAGING_TRANSACTION = 5_000  # the bot's flush limit


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


async def _ceilings(pg_dsn: str, ch_url: str, rows: int, batch_rows: int) -> tuple[float, float]:
    pg = await asyncpg.connect(pg_dsn)
    ch = await clickhouse_url_client(ch_url)
    try:
        family = BY_NAME["message_events"]
        # 1. Raw ceiling: COPY out of Postgres alone, in batches of the same size.
        await prepare_session(pg)
        chunks: list[bytes] = []
        t = time.perf_counter()
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
        copy_s = time.perf_counter() - t

        # 2. Raw ceiling: bulk insert of those bytes into ClickHouse alone.
        await ch.command("CREATE TABLE ceiling AS messages")
        t = time.perf_counter()
        for chunk in chunks:
            await ch.raw_insert(
                "ceiling",
                family.target_columns,
                insert_block=chunk,
                fmt=WIRE_FORMAT,
                settings=INSERT_SETTINGS,
            )
        insert_s = time.perf_counter() - t
        assert await ch.command("SELECT count() FROM ceiling") == rows
        return copy_s, insert_s
    finally:
        await pg.close()
        await ch.close()


async def _claims(pg_dsn: str, rows: int, batch_rows: int) -> float:
    """The Postgres half of the ETL alone: every claim-and-mark statement, committed, no load."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        await prepare_session(pg)
        cursor = (await load_cursors(pg))["message_events"]
        claimed_rows = 0
        t = time.perf_counter()
        while not cursor.caught_up:
            claimed = await claim(pg, cursor, batch_rows)
            await claimed.tx.commit()
            claimed_rows += claimed.rows
        seconds = time.perf_counter() - t
        assert claimed_rows == rows
        return seconds
    finally:
        await pg.close()


async def _etl(pg_dsn: str, ch_url: str, rows: int, batch_rows: int, pipeline: bool) -> float:
    t = time.perf_counter()
    result = await run_once(
        pg_dsn,
        ch_url,
        None,
        RunOptions(batch_rows=batch_rows, deadline_seconds=3600, pipeline=pipeline),
    )
    etl_s = time.perf_counter() - t
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == rows
    ch = await clickhouse_url_client(ch_url)
    try:
        assert await ch.command("SELECT count() FROM messages FINAL") == rows
        assert await ch.command("SELECT sum(messages) FROM message_activity_hourly FINAL") == rows
        assert await ch.command("SELECT sum(messages) FROM message_activity_daily FINAL") == rows
    finally:
        await ch.close()
    return etl_s


async def main(base_pg: str, base_ch: str, rows: int, batch_rows: int, guilds: int) -> None:
    timings: dict[str, float] = {}
    # Each ETL variant gets a freshly staged database: a marked table is not the same table.
    for variant in ("ceilings", "claims", "pipelined", "serial"):
        print(f"{variant}: staging {rows:,} message events across {guilds} guilds …", flush=True)
        name, pg_dsn, ch_url = await _stage(base_pg, base_ch, rows, guilds)
        try:
            if variant == "ceilings":
                timings["copy"], timings["insert"] = await _ceilings(
                    pg_dsn, ch_url, rows, batch_rows
                )
            elif variant == "claims":
                timings["claims"] = await _claims(pg_dsn, rows, batch_rows)
            else:
                timings[variant] = await _etl(
                    pg_dsn, ch_url, rows, batch_rows, pipeline=variant == "pipelined"
                )
        finally:
            await _drop(base_pg, base_ch, name)

    rate = {k: rows / v for k, v in timings.items()}
    slower = min(rate["copy"], rate["insert"])
    print(f"\nrows: {rows:,}   batch: {batch_rows:,}   guilds: {guilds}")
    print(f"{'path':<52}{'seconds':>9}{'rows/s':>12}{'/ceiling':>10}")
    for key, label in (
        ("copy", "COPY out of Postgres alone"),
        ("insert", "bulk insert into ClickHouse alone (TSV)"),
        ("claims", "ETL's claim+mark alone (Postgres, nothing loaded)"),
        ("pipelined", "ETL pipelined: claim+mark | insert, rollups, commit"),
        ("serial", "ETL serial: claim+mark, insert, rollups, commit"),
    ):
        print(f"{label:<52}{timings[key]:>9.2f}{rate[key]:>12,.0f}{rate[key] / slower:>10.0%}")
    print(
        f"\nETL (pipelined) / slower raw ceiling: {rate['pipelined'] / slower:.0%}   "
        f"(targets: >= 200,000 rows/s and >= 50%)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--guilds", type=int, default=50)
    args = parser.parse_args()
    with bench_stores() as stores:
        # The event loop `herwa etl run` uses (etl/cli.py), for the ceilings too.
        uvloop.run(
            main(
                stores.postgres_dsn, stores.clickhouse_url, args.rows, args.batch_rows, args.guilds
            )
        )
