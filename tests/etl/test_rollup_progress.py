"""The message rollups' progress mark (etl_rollup_progress) missing: read as 0, never a skip."""

from __future__ import annotations

import asyncpg

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from tests.etl._support import actual_hourly, ch_value, expected_hourly, stage_messages

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=60, retention_hours=72)


async def _assert_rollups_complete(endpoints: Endpoints, pg: asyncpg.Connection) -> None:
    staged = await pg.fetchval("SELECT count(*) FROM message_events")
    assert await actual_hourly(endpoints) == await expected_hourly(pg)
    for rollup in (
        "message_activity_hourly",
        "message_activity_15m",
        "message_activity_author_days",
        "message_activity_weekly",
    ):
        total = await ch_value(endpoints, f"SELECT sum(messages) FROM {rollup} FINAL")  # noqa: S608
        assert total == staged, rollup


async def _progress(pg: asyncpg.Connection) -> list[tuple[str, bool]]:
    """(rollup, whether its mark equals its family's low-water mark)."""
    rows = await pg.fetch(
        "SELECT rollup, loaded_batch = (SELECT max(staged_xid) FROM etl_low_water"
        " WHERE family = CASE rollup WHEN 'messages' THEN 'message_events'"
        " ELSE 'voice_sessions' END) AS current FROM etl_rollup_progress ORDER BY rollup"
    )
    return [(r["rollup"], r["current"]) for r in rows]


async def test_a_missing_rollup_mark_recomputes_everything_loaded(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # What `herwa demo` did before every run: the whole table emptied, the migration's row gone.
    await pg.execute("TRUNCATE etl_rollup_progress")
    await stage_messages(pg, range(1, 251))
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == 250
    await _assert_rollups_complete(migrated, pg)
    # The mark is back, at the batches it covers, so the next run does not redo them.
    assert await _progress(pg) == [("messages", True), ("voice", True)]

    # Emptied again between runs: the messages already rolled up are recomputed again (same
    # numbers), and the new ones are added.
    await pg.execute("TRUNCATE etl_rollup_progress")
    await stage_messages(pg, range(251, 301))
    again = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert again.outcome == "caught_up", again.error
    assert again.stats.rows_moved["message_events"] == 50
    await _assert_rollups_complete(migrated, pg)
    assert await _progress(pg) == [("messages", True), ("voice", True)]
