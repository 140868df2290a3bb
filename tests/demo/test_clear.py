"""What `herwa demo` empties between runs: the events, never the rows a migration seeds.

Emptied, etl_rollup_progress (seeded by postgres migration 0007) once made every later rollup
recompute skip: the demo's charts and /overview counted a fraction of the messages while its
table checks all passed.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

import herwa.schema
from herwa.demo import KEEP_TABLES, clear_previous_run
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from tests.etl import actual_hourly, ch_value, expected_hourly, stage_messages

MIGRATIONS = Path(herwa.schema.__file__).parent / "postgres"
SEEDS = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE | re.MULTILINE)


def test_every_table_a_migration_seeds_is_kept() -> None:
    seeded = {
        table.lower()
        for sql in sorted(MIGRATIONS.glob("*.sql"))
        for table in SEEDS.findall(sql.read_text())
    }
    assert "etl_rollup_progress" in seeded  # the parser finds what it is meant to
    assert seeded <= KEEP_TABLES, (
        f"seeded by a migration, emptied by the demo: {seeded - KEEP_TABLES}"
    )


async def test_clearing_a_previous_run_keeps_the_marks_and_the_rollups_count_everything(
    migrated: Endpoints,
) -> None:
    dsn = migrated.postgres_dsn
    options = RunOptions(batch_rows=100, deadline_seconds=60)
    pg = await asyncpg.connect(dsn)
    try:
        # A previous demo run: its messages staged and loaded.
        await stage_messages(pg, range(1, 101))
        first = await run_once(dsn, migrated.clickhouse_url, None, options)
        assert first.outcome == "caught_up", first.error
        progress = await pg.fetch("SELECT rollup, loaded_batch::text FROM etl_rollup_progress")

        cleared = await clear_previous_run(migrated)
        assert cleared > 0
        assert await pg.fetchval("SELECT count(*) FROM message_events") == 0
        assert await ch_value(migrated, "SELECT count() FROM messages") == 0
        # The marks stay as the previous run left them.
        assert await pg.fetch("SELECT rollup, loaded_batch::text FROM etl_rollup_progress") == (
            progress
        )

        # This run's messages all reach the rollups the commands read.
        await stage_messages(pg, range(1001, 1301))
        second = await run_once(dsn, migrated.clickhouse_url, None, options)
        assert second.outcome == "caught_up", second.error
        assert second.stats.rows_moved["message_events"] == 300
        assert await actual_hourly(migrated) == await expected_hourly(pg)
        assert (
            await ch_value(migrated, "SELECT sum(messages) FROM message_activity_15m FINAL") == 300
        )
    finally:
        await pg.close()
