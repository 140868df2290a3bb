"""``herwa operator``: run the GuildSubscription operator (kopf) with metrics and health.

Start-up never needs Postgres or Redis to be reachable: the pool is created without
connections, seeding happens on the first reconcile (and is retried), and an unreachable store
turns into a ``StoreUnavailable`` condition and a retry — not a crash loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal

import kopf

from herwa import config, platform
from herwa.logs import register_url
from herwa.operator import etl_health
from herwa.operator.handlers import build_registry, configure_settings
from herwa.operator.reconcile import OperatorRuntime
from herwa.stores import postgres_pool, redis_client
from herwa.telemetry import Readiness, TelemetryServer, setup_tracing

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform-file",
        default=None,
        help="tiers/features/commands YAML (default: HERWA_OPERATOR_PLATFORM_FILE)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (a single replica, or local development)",
    )


def run(args: argparse.Namespace) -> int:
    settings = config.operator()
    pg, rd, tel = config.postgres(), config.redis(), config.telemetry()
    for url in (pg.dsn, rd.url):
        register_url(url.get_secret_value())
    path = args.platform_file or settings.platform_file
    try:
        plat = platform.load(path)
    except platform.PlatformError as exc:
        log.error("invalid platform file: %s", exc)
        return 2
    return asyncio.run(_main(settings, plat, pg, rd, tel, standalone=args.standalone))


async def _seed_until_done(rt: OperatorRuntime, stop: asyncio.Event) -> None:
    """Seeds the platform at start-up, retrying while Postgres is unreachable or not migrated.

    Readiness waits for the seed, so it must not wait for the first GuildSubscription: a fresh
    install has none, and `helm install --wait` would time out on an operator never Ready."""
    delay = 1.0
    while not stop.is_set():
        try:
            await rt.ensure_seeded()
            return
        except Exception as exc:  # retried: the store may come up after the operator
            log.warning("platform seed failed; retrying", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)


async def _main(
    settings: config.OperatorSettings,
    plat: platform.Platform,
    pg: config.PostgresSettings,
    rd: config.RedisSettings,
    tel: config.TelemetrySettings,
    *,
    standalone: bool,
) -> int:
    setup_tracing("herwa-operator")
    # min_size=0: creating the pool opens no connection, so a down Postgres cannot stop start-up.
    pool = await postgres_pool(pg.model_copy(update={"pool_min_size": 0}), command_timeout=15)
    redis = redis_client(rd)
    rt = OperatorRuntime(pool=pool, redis=redis, prefix=rd.key_prefix, platform=plat)
    ready = asyncio.Event()

    async def readiness() -> Readiness:
        return Readiness(
            ready.is_set() and rt.seeded, {"kopf": ready.is_set(), "seeded": rt.seeded}
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    kopf_settings = kopf.OperatorSettings()
    clusterwide = settings.namespace is None
    configure_settings(
        kopf_settings,
        peering_name=None if standalone or not settings.peering_name else settings.peering_name,
        clusterwide=clusterwide,
        priority=random.randint(1, 2**31 - 1),  # noqa: S311 - a tie-breaker, not a secret
    )
    registry = build_registry(settings.drift_check_seconds)
    # The ETL's health for Prometheus, read from Postgres: its CronJob pods cannot be scraped.
    etl_watch = asyncio.create_task(etl_health.watch(pool))
    try:
        async with TelemetryServer(tel.host, tel.port, readiness=readiness):
            task = asyncio.create_task(
                kopf.operator(
                    registry=registry,
                    settings=kopf_settings,
                    clusterwide=clusterwide,
                    namespaces=() if clusterwide else [settings.namespace or ""],
                    memo=kopf.Memo(runtime=rt),
                    stop_flag=stop,
                    ready_flag=ready,
                    standalone=standalone or not settings.peering_name,
                )
            )
            seeding = asyncio.create_task(_seed_until_done(rt, stop))
            log.info(
                "operator started",
                extra={
                    "namespace": settings.namespace or "*",
                    "pid": os.getpid(),
                    "drift_check_seconds": settings.drift_check_seconds,
                },
            )
            await task
            seeding.cancel()
    finally:
        etl_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await etl_watch
        with contextlib.suppress(Exception):
            await redis.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), 10)
    return 0
