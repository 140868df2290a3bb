"""``herwa migrate``: run as a Helm pre-install/pre-upgrade hook, or by hand."""

from __future__ import annotations

import argparse
import asyncio
import json

from herwa import config
from herwa.schema import MigrationError, migrate


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending Postgres and ClickHouse migrations (HERWA_POSTGRES_DSN, "
        "HERWA_CLICKHOUSE_URL). Idempotent, and safe to run from several pods at once: "
        "runs serialise on a Postgres advisory lock."
    )


def run(args: argparse.Namespace) -> int:
    postgres = config.postgres()
    clickhouse = config.clickhouse()
    try:
        report = asyncio.run(migrate(postgres.dsn, clickhouse.url))
    except MigrationError as exc:
        print(f"herwa migrate: {exc}")
        return 1
    print(json.dumps({"applied": report.applied, "current": report.current}))
    return 0
