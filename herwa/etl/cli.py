"""``herwa etl run``: one bounded ETL run (the CronJob), or ``--loop`` for local use.

``herwa etl reset-low-water``: once, after the database was restored or copied into another
Postgres cluster (runs refuse to start until then; see herwa.etl.low_water).

Exit codes: 0 caught up or stopped at the deadline (the rest is left for the next run);
1 the run failed; 2 configuration error (herwa.cli); 75 another run holds the lock (EX_TEMPFAIL:
nothing wrong, try later — a CronJob with concurrencyPolicy Forbid rarely sees it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvloop

from herwa import config
from herwa.etl import lock, low_water
from herwa.etl.runner import RunOptions, run_once
from herwa.logs import register_url
from herwa.stores import postgres_connection, redis_client
from herwa.telemetry import setup_tracing

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_LOCKED = 75


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="etl_action", metavar="{run,reset-low-water}")
    actions.required = True
    run = actions.add_parser("run", help="move staged rows into ClickHouse, then exit")
    run.add_argument(
        "--loop",
        action="store_true",
        help="keep running, one bounded run every --interval seconds (local use)",
    )
    run.add_argument("--interval", type=float, default=5.0, help="seconds between --loop runs")
    run.add_argument("--batch-rows", type=int, help="override HERWA_ETL_BATCH_ROWS")
    run.add_argument("--deadline", type=float, help="override HERWA_ETL_DEADLINE_SECONDS")
    actions.add_parser(
        "reset-low-water",
        help="re-base the claim marks on this server's transaction ids (after a restore)",
    )


def run(args: argparse.Namespace) -> int:
    if args.etl_action == "reset-low-water":
        return asyncio.run(_reset())
    # uvloop: the run is one process shuttling bytes between two sockets, and the CPU it saves
    # goes to Postgres and ClickHouse on the same nodes (figures: benchmarks/README.md).
    return uvloop.run(_main(args))


async def _reset() -> int:
    dsn = config.postgres().dsn
    register_url(dsn.get_secret_value())
    conn = await postgres_connection(dsn)
    try:
        try:
            await lock.acquire(conn)
        except lock.LockHeld as exc:
            log.warning("%s; exiting (code %d)", exc, EXIT_LOCKED)
            return EXIT_LOCKED
        restaged = await low_water.reset(conn)
    finally:
        await conn.close()
    log.info("low-water marks reset; rows re-staged: %s", restaged, extra={"restaged": restaged})
    return EXIT_OK


async def _main(args: argparse.Namespace) -> int:
    setup_tracing("herwa-etl")
    settings = config.etl()
    overrides = {
        k: v
        for k, v in (("batch_rows", args.batch_rows), ("deadline_seconds", args.deadline))
        if v is not None
    }
    if overrides:
        settings = config.load(config.EtlSettings, **{**settings.model_dump(), **overrides})
    pg = config.postgres()
    ch = config.clickhouse()
    redis_settings = config.redis()
    for url in (pg.dsn, ch.url, redis_settings.url):
        register_url(url.get_secret_value())
    if settings.pull_postgres_dsn is not None:
        register_url(settings.pull_postgres_dsn.get_secret_value())
    options = RunOptions(
        batch_rows=settings.batch_rows,
        deadline_seconds=settings.deadline_seconds,
        retention_hours=settings.retention_hours,
        pushgateway_url=settings.pushgateway_url,
        redis_prefix=redis_settings.key_prefix,
        transfer=settings.transfer,
        pull_postgres_dsn=(
            settings.pull_postgres_dsn.get_secret_value() if settings.pull_postgres_dsn else None
        ),
    )
    redis = redis_client(redis_settings)
    try:
        while True:
            code = await _one(pg.dsn.get_secret_value(), ch.url.get_secret_value(), redis, options)
            if not args.loop:
                return code
            await asyncio.sleep(args.interval)
    finally:
        await redis.aclose()


async def _one(dsn: str, url: str, redis: object, options: RunOptions) -> int:
    try:
        result = await run_once(dsn, url, redis, options)  # type: ignore[arg-type]
    except lock.LockHeld as exc:
        log.warning("%s; exiting (code %d)", exc, EXIT_LOCKED)
        return EXIT_LOCKED
    # The runner has logged the run's outcome, figures and error already.
    return EXIT_FAILED if result.outcome == "failed" else EXIT_OK
