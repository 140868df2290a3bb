"""Heatmap and retention latency for one guild with >= 10 M message events: rollups vs raw.

Usage: ``python benchmarks/query_latency.py [--messages 10000000]``; uses the HERWA_* servers
where set, embedded ones otherwise. Builds a throw-away database: messages are
generated inside ClickHouse (a year of traffic, skewed authors and channels), member joins and
voice sessions beside them, and the rollups are built by the ETL's own recompute. Each query
runs through herwa.analytics as the read-only user; the median of several runs is printed.
"""

# ruff: noqa: S608 - benchmark SQL is composed from its own constants and integers.

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import urllib.parse
import uuid
from datetime import UTC, datetime

from _stores import bench_stores

from herwa import analytics
from herwa.devstack import Endpoints
from herwa.etl import rollups
from herwa.stores import clickhouse_url_client

GUILD = 4242
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 1, tzinfo=UTC)


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def _median(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def main(stores: Endpoints, messages: int, runs: int) -> None:
    from herwa.schema import migrate

    base = stores.clickhouse_url
    ro_base = stores.clickhouse_readonly_url
    name = f"herwa_qbench_{uuid.uuid4().hex[:8]}"
    url, ro_url = _with_db(base, name), _with_db(ro_base, name)
    # Only the ClickHouse half of the schema is needed; migrate() wants Postgres too.
    pg = stores.postgres_dsn
    import asyncpg

    admin = await asyncpg.connect(pg)
    await admin.execute(f'CREATE DATABASE "{name}"')
    ch = None
    try:
        await migrate(_with_db(pg, name), url)
        ch = await clickhouse_url_client(url, send_receive_timeout=3600)
        span = int((END - START).total_seconds())
        print(f"generating {messages:,} messages for guild {GUILD} …", flush=True)
        t = time.perf_counter()
        await ch.command(
            f"""
            INSERT INTO messages (message_id, guild_id, channel_id, author_id, created_at,
                                  kind, is_bot, version)
            SELECT 1000000000000 + number, {GUILD},
                   100 + toUInt64(pow(randCanonical(), 2) * 40),
                   10000 + toUInt64(pow(randCanonical(), 3) * 20000),
                   toDateTime64({int(START.timestamp())}, 3, 'UTC')
                       + toIntervalMillisecond(intDiv(number * {span * 1000}, {messages})),
                   'text', number % 97 = 0, 1
            FROM numbers({messages})
            """,
            settings={"max_insert_threads": 2},
        )
        await ch.command(
            f"""
            INSERT INTO member_events (guild_id, user_id, event, at, account_created_at,
                                       is_bot, version)
            SELECT {GUILD}, 10000 + number, 'join',
                   toDateTime64({int(START.timestamp())}, 3, 'UTC')
                       + toIntervalSecond(intDiv(number * {span}, 20000)),
                   toDateTime64('2020-01-01', 3, 'UTC'), false, 1
            FROM numbers(20000)
            """
        )
        await ch.command(
            f"""
            INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, channel_kind,
                joined_at, left_at, duration_seconds, muted_seconds, close_reason, is_bot,
                version)
            SELECT generateUUIDv4(), {GUILD}, 50, 10000 + number % 3000, 'voice', j,
                   j + toIntervalSecond(1800), 1800, 0, 'leave', false, 1
            FROM (SELECT number, toDateTime64({int(START.timestamp())}, 3, 'UTC')
                      + toIntervalSecond(intDiv(number * {span}, 200000)) AS j
                  FROM numbers(200000))
            """
        )
        gen = time.perf_counter() - t
        t = time.perf_counter()
        hours = [(GUILD, h) for h in range(int(START.timestamp()), int(END.timestamp()), 3600)]
        # Month by month, as the ETL would have done it batch by batch.
        for i in range(0, len(hours), 744):
            await rollups.recompute(ch, hours[i : i + 744])
        build = time.perf_counter() - t
        raw_rows = await ch.command(f"SELECT count() FROM messages WHERE guild_id = {GUILD}")
        rollup_15m = await ch.command("SELECT count() FROM message_activity_15m FINAL")
        rollup_h = await ch.command("SELECT count() FROM message_activity_hourly FINAL")
        rollup_d = await ch.command("SELECT count() FROM message_activity_daily FINAL")
        print(
            f"generated in {gen:.1f}s; rollups built in {build:.1f}s "
            f"(15-min rows {rollup_15m:,}, hourly rows {rollup_h:,}, daily rows {rollup_d:,})"
        )

        ro = await clickhouse_url_client(ro_url, send_receive_timeout=3600)
        try:
            results = []
            for label, query in (
                (
                    "heatmap, 1 year, Europe/Berlin",
                    lambda s: analytics.heatmap(ro, GUILD, "Europe/Berlin", START, END, source=s),
                ),
                (
                    "heatmap, 1 year, Asia/Kolkata",
                    lambda s: analytics.heatmap(ro, GUILD, "Asia/Kolkata", START, END, source=s),
                ),
                (
                    "retention, 1 year of cohorts, 12 weeks",
                    lambda s: analytics.retention(
                        ro, GUILD, "Europe/Berlin", START, END, weeks=12, source=s
                    ),
                ),
                (
                    "retention, 1 year, 12 weeks, Asia/Kolkata",
                    lambda s: analytics.retention(
                        ro, GUILD, "Asia/Kolkata", START, END, weeks=12, source=s
                    ),
                ),
            ):
                a = await query("rollup")
                b = await query("raw")
                assert a == b, f"{label}: rollup and raw disagree"
                rollup_s = await _median(lambda q=query: q("rollup"), runs)
                raw_s = await _median(lambda q=query: q("raw"), runs)
                results.append((label, rollup_s, raw_s))
        finally:
            await ro.close()
        print(f"\nguild {GUILD}: {raw_rows:,} message events; median of {runs} runs each")
        print(f"{'query':<42}{'rollup ms':>11}{'raw ms':>11}{'speed-up':>10}")
        for label, rollup_s, raw_s in results:
            print(
                f"{label:<42}{rollup_s * 1000:>11.1f}{raw_s * 1000:>11.1f}{raw_s / rollup_s:>9.1f}x"
            )
    finally:
        if ch is not None:
            await ch.command(f"DROP DATABASE IF EXISTS {name}")
            await ch.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_stores() as stores:
        asyncio.run(main(stores, args.messages, args.runs))
