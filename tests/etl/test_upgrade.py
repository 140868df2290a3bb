"""Staging rows written before postgres migration 0006 (staged_xid) are loaded exactly once."""

from __future__ import annotations

import asyncpg

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.schema import apply_postgres, discover, migrate, postgres_history
from herwa.stores import clickhouse_url_client
from tests.etl._support import pending_rows, stage_messages

_BEFORE = 6  # the first postgres migration that knows staged_xid


async def _migrate_postgres_below(pg: asyncpg.Connection, version: int) -> None:
    """The schema as a release before ``version`` left it, recorded like `herwa migrate` does."""
    await postgres_history(pg)
    for migration in discover("postgres"):
        if migration.version >= version:
            break
        await apply_postgres(pg, migration)


async def test_rows_staged_before_the_upgrade_are_loaded_once(endpoints: Endpoints) -> None:
    pg = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        await _migrate_postgres_below(pg, _BEFORE)
        await stage_messages(pg, range(1, 301))
        # 1-100 went to ClickHouse under the old release (their copies there are not part of
        # this test: the new release must simply not load them again).
        await pg.execute("UPDATE message_events SET ch_ingested_at = now() WHERE message_id <= 100")
        report = await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
        assert _BEFORE in report.applied["postgres"]
        legacy = await pg.fetch(
            "SELECT message_id, staged_xid::text::bigint AS x FROM message_events ORDER BY 1"
        )
        assert {r["x"] for r in legacy[:100]} == {0}
        # Pending rows keep the id of the transaction that staged them: 50 rows each.
        pending_xids = [r["x"] for r in legacy[100:]]
        assert len(set(pending_xids)) == 4
        assert min(pending_xids) > 1

        result = await run_once(
            endpoints.postgres_dsn, endpoints.clickhouse_url, None, RunOptions(batch_rows=100)
        )
        assert result.outcome == "caught_up", result.error
        assert result.stats.rows_moved["message_events"] == 200
        assert await pending_rows(pg, "message_events") == 0
    finally:
        await pg.close()
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        ids = await ch.query("SELECT message_id FROM messages FINAL ORDER BY message_id")
        assert [r[0] for r in ids.result_rows] == list(range(101, 301))
    finally:
        await ch.close()
