"""Versioned schema for Postgres and ClickHouse, applied by ``herwa migrate``.

Migrations are plain SQL files named ``NNNN_what.sql`` under ``postgres/`` and ``clickhouse/``.
An applied file must never change: its checksum is recorded and compared on every run.
"""

from herwa.schema._migrate import (
    Migration,
    MigrationError,
    MigrationReport,
    Store,
    apply_clickhouse,
    apply_postgres,
    clickhouse_history,
    discover,
    migrate,
    migrate_postgres,
    pending,
    postgres_history,
)

__all__ = [
    "Migration",
    "MigrationError",
    "MigrationReport",
    "Store",
    "apply_clickhouse",
    "apply_postgres",
    "clickhouse_history",
    "discover",
    "migrate",
    "migrate_postgres",
    "pending",
    "postgres_history",
]
