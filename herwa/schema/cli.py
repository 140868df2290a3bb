"""``herwa migrate``: run as a Helm pre-install/pre-upgrade hook, or by hand."""

from __future__ import annotations

import argparse
import asyncio
import logging

from herwa import config
from herwa.schema import MigrationError, migrate
from herwa.telemetry import setup_tracing, tracer

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending Postgres and ClickHouse migrations (HERWA_POSTGRES_DSN, "
        "HERWA_CLICKHOUSE_URL). Idempotent, and safe to run from several pods at once: "
        "runs serialise on a Postgres advisory lock."
    )


def run(args: argparse.Namespace) -> int:
    postgres = config.postgres()
    clickhouse = config.clickhouse()
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
