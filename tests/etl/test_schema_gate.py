"""An ETL run whose image is newer than the schema fails on record and touches nothing.

The chart's roles wait for the migrate Job in an init container; the ETL does not (a run held
in Init is neither failed nor succeeded, so no alert could see it), it checks inside its
recorded run instead."""

from __future__ import annotations

import asyncpg

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.schema import discover
from tests.etl._support import stage_messages

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=60, retention_hours=72)


async def test_a_run_before_the_newest_migration_fails_on_record(migrated: Endpoints) -> None:
    newest = discover("postgres")[-1]
    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await stage_messages(conn, range(30))
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", newest.version)
        result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
        assert result.outcome == "failed"
        assert result.error is not None
        assert f"postgres {newest.version:04d}_{newest.name}" in result.error
        runs = await conn.fetch("SELECT outcome, error FROM etl_runs ORDER BY run_id")
        assert [r["outcome"] for r in runs] == ["failed"]
        assert result.stats.rows_moved == {}
        # Once the migration is on record again the next run loads everything.
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            newest.version,
            newest.name,
            newest.checksum,
        )
        result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
        assert result.outcome == "caught_up"
        assert result.stats.rows_moved["message_events"] == 30
    finally:
        await conn.close()
