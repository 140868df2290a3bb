"""``herwa migrate``: run by the release's migrate Job (or by hand); ``--wait`` is every role's
init container, which holds the role back until the Job has brought the schema up to date."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import asyncpg
from clickhouse_connect.driver.exceptions import ClickHouseError
from pydantic import SecretStr

from herwa import config
from herwa.schema import MigrationError, migrate, pending
from herwa.telemetry import setup_tracing, tracer

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending Postgres and ClickHouse migrations (HERWA_POSTGRES_DSN, "
        "HERWA_CLICKHOUSE_URL). Idempotent, and safe to run from several pods at once: "
        "runs serialise on a Postgres advisory lock."
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="apply nothing: wait until both stores hold every migration this release knows",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        help="with --wait: give up (exit 1) after this many seconds (default 600)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 86400 seconds")
    return value


def run(args: argparse.Namespace) -> int:
    postgres = config.postgres()
    clickhouse = config.clickhouse()
    if args.wait:
        return asyncio.run(_wait(postgres.dsn, clickhouse.url, args.timeout))
    setup_tracing("herwa-migrate")
    with tracer("herwa.schema").start_as_current_span("migrate") as span:
        try:
            report = asyncio.run(migrate(postgres.dsn, clickhouse.url))
        except MigrationError as exc:
            span.record_exception(exc)
            log.error("migration failed: %s", exc)
            return 1
        for store, versions in report.applied.items():
            span.set_attribute(f"herwa.migrations.applied.{store}", len(versions))
        log.info("migrations done", extra={"applied": report.applied, "current": report.current})
    return 0


async def _wait(dsn: SecretStr, url: SecretStr, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last: list[str] | None = None
    while True:
        try:
            missing = await pending(dsn, url)
        except MigrationError as exc:
            log.error("schema mismatch: %s", exc)
            return 1
        except (OSError, asyncpg.PostgresError, ClickHouseError) as exc:
            # Stores that are still starting are what this init step waits out.
            missing = [f"stores unreachable: {type(exc).__name__}: {exc}"]
        if not missing:
            log.info("schema is current")
            return 0
        if missing != last:
            log.info("waiting for migrations", extra={"pending": missing})
            last = missing
        if time.monotonic() >= deadline:
            log.error("schema still not current after %.0f s: %s", timeout, ", ".join(missing))
            return 1
        await asyncio.sleep(2.0)
