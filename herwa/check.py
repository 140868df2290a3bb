"""``herwa check``: is every role of a deployment ready? The chart's ``helm test`` hook runs it.

Two kinds of check, each repeated until it passes or ``--wait`` runs out:

* ``--readyz URL``: a long-running role's ``/readyz`` (through its Service, or a bot pod's
  stable DNS name) answers 200;
* ``--stores``: the stores the batch roles (ETL, migrate) use answer — Postgres (with the
  schema applied), Redis and ClickHouse, from the usual ``HERWA_*`` variables; and, when the
  ETL has ClickHouse pull its batches (``HERWA_ETL_TRANSFER``), ClickHouse reaches Postgres.

Exit code 0 when every check passed, 1 otherwise; each check's result is one log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import aiohttp

from herwa import config
from herwa.logs import register_url
from herwa.stores import (
    PullSource,
    clickhouse_url_client,
    postgres_connection,
    redis_client,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_READY = 1

Check = Callable[[], Awaitable[str]]  # returns a short detail, raises when not ready


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--readyz",
        action="append",
        default=[],
        metavar="URL",
        type=_http_url,
        help="a role's readiness URL that must answer 200 (repeatable)",
    )
    parser.add_argument(
        "--stores",
        action="store_true",
        help="check Postgres (migrated), Redis and ClickHouse from HERWA_* variables",
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying a failing check this long (default 60)",
    )


def _http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"--wait must be between 0 and 3600, got {value}")
    return seconds


def run(args: argparse.Namespace) -> int:
    checks: dict[str, Check] = {url: _readyz(url) for url in args.readyz}
    if args.stores:
        checks.update(_store_checks())
    if not checks:
        log.error("nothing to check: give --readyz URL and/or --stores")
        return EXIT_NOT_READY
    results = asyncio.run(_run_all(checks, args.wait))
    return EXIT_OK if all(results.values()) else EXIT_NOT_READY


async def _run_all(checks: dict[str, Check], wait: float) -> dict[str, bool]:
    deadline = time.monotonic() + wait
    names = list(checks)
    outcomes = await asyncio.gather(*(_until_ready(n, checks[n], deadline) for n in names))
    return dict(zip(names, outcomes, strict=True))


async def _until_ready(name: str, check: Check, deadline: float) -> bool:
    attempts = 0
    while True:
        attempts += 1
        try:
            detail = await asyncio.wait_for(check(), 10)
        except Exception as exc:  # every failure is "not ready yet"; the last one is reported
            if time.monotonic() >= deadline:
                log.error(
                    "not ready",
                    extra={"check": name, "attempts": attempts, "error": f"{exc!r}"},
                )
                return False
            await asyncio.sleep(2)
            continue
        log.info("ready", extra={"check": name, "attempts": attempts, "detail": detail})
        return True


def _readyz(url: str) -> Check:
    async def check() -> str:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            body = await response.text()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]}")
            return body[:200]

    return check


def _store_checks() -> dict[str, Check]:
    pg, rd, ch = config.postgres(), config.redis(), config.clickhouse()
    for secret in (pg.dsn, rd.url, ch.url):
        register_url(secret.get_secret_value())

    async def postgres() -> str:
        conn = await postgres_connection(pg.dsn)
        try:
            version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        finally:
            await conn.close()
        if version is None:
            raise RuntimeError("no schema migration applied")
        return f"schema version {version}"

    async def redis() -> str:
        client = redis_client(rd)
        try:
            await client.ping()
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
        return "pong"

    async def clickhouse() -> str:
        client = await clickhouse_url_client(ch.url)
        try:
            result = await client.query("SELECT 1")
        finally:
            await client.close()
        return f"select 1 = {result.result_rows[0][0]}"

    checks: dict[str, Check] = {"postgres": postgres, "redis": redis, "clickhouse": clickhouse}
    etl = config.etl()
    if etl.transfer == "pull":
        pull_dsn = etl.pull_postgres_dsn or pg.dsn
        register_url(pull_dsn.get_secret_value())

        async def clickhouse_reaches_postgres() -> str:
            source = PullSource.from_dsn(pull_dsn.get_secret_value())
            client = await clickhouse_url_client(ch.url)
            try:
                return await source.probe(client, "for the ETL")
            finally:
                await client.close()

        checks["clickhouse reaches postgres"] = clickhouse_reaches_postgres
    return checks
