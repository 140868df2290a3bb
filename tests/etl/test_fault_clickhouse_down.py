"""Fault: ClickHouse killed (SIGKILL) in the middle of an ETL run.

The run fails; batches that committed before the kill stay loaded, the batch in flight is
rolled back in Postgres (its rows stay pending), the rollup recompute owed is left to the next
run. After ClickHouse is back the next run loads the rest, and ClickHouse equals Postgres
staging exactly, for every family and for the message rollups: nothing lost, nothing counted
twice (a batch inserted but not committed is re-inserted with the same deduplication token and
replaced under FINAL in any case).
"""

# ruff: noqa: S608 - table names in test SQL come from the ETL's static family registry.

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from herwa.devstack import DevStack, Endpoints
from herwa.etl.families import FAMILIES, Family
from herwa.etl.runner import RunOptions, run_once
from herwa.schema import migrate
from tests.etl._support import (
    T0,
    actual_hourly,
    ch_value,
    expected_hourly,
    pending_rows,
    stage_messages,
)

pytestmark = pytest.mark.slow

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=120, retention_hours=72)
ROWS = 300  # per family besides messages; staged 50 to a transaction, so several batches each
MESSAGES = 1000

# Every non-message family, staged the way the bot does: rows of 50 per transaction.
_STAGE = {
    "message_edits": (
        "INSERT INTO message_edits (message_id, edited_at, guild_id, channel_id)"
        " SELECT i, $3::timestamptz + i * interval '1 minute', 1, 10 + i % 3"
        " FROM generate_series($1::int, $2::int) AS i"
    ),
    "message_deletions": (
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " SELECT i * 3, 1, 10 + (i * 3) % 3, $3::timestamptz + interval '30 days'"
        " FROM generate_series($1::int, $2::int) AS i"
    ),
    "voice_sessions": (
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) SELECT gen_random_uuid(), 1, 50, 100 + i,"
        " $3::timestamptz + i * interval '1 minute', $3::timestamptz + i * interval '2 minute',"
        " 'leave' FROM generate_series($1::int, $2::int) AS i"
    ),
    "member_events": (
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " SELECT 1, 1000 + i, 'join', $3::timestamptz + i * interval '1 minute',"
        " $3::timestamptz - interval '400 days' FROM generate_series($1::int, $2::int) AS i"
    ),
    "guild_events": (
        "INSERT INTO guild_events (guild_id, event, at, member_count)"
        " SELECT i, 'join', $3::timestamptz, 7 FROM generate_series($1::int, $2::int) AS i"
    ),
    "member_count_snapshots": (
        "INSERT INTO member_count_snapshots (guild_id, day, member_count)"
        " SELECT i, $3::timestamptz::date, 7 + i FROM generate_series($1::int, $2::int) AS i"
    ),
    "command_usage": (
        "INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations)"
        " SELECT 'd1', i, 'overview', $3::timestamptz, 'ok', i % 5 + 1"
        " FROM generate_series($1::int, $2::int) AS i"
    ),
    "message_reactions": (
        "INSERT INTO message_reactions (guild_id, channel_id, message_id, user_id, emoji, event,"
        " at) SELECT 1, 10 + i % 3, i, 100 + i % 7, '👍', 'add',"
        " $3::timestamptz + i * interval '1 minute' FROM generate_series($1::int, $2::int) AS i"
    ),
}


@pytest.fixture
async def own_clickhouse(
    services: Endpoints, endpoints: Endpoints, tmp_path: Path
) -> AsyncIterator[tuple[DevStack, Endpoints]]:
    """A ClickHouse of this test's own (the shared one must not be killed)."""
    stack = DevStack(
        tmp_path / "ch", postgres_dsn=endpoints.postgres_dsn, redis_url=endpoints.redis_url
    )
    ep = await asyncio.to_thread(stack.up)
    await migrate(endpoints.postgres_dsn, ep.clickhouse_url)
    try:
        yield stack, replace(endpoints, clickhouse_url=ep.clickhouse_url)
    finally:
        await asyncio.to_thread(stack.down)


async def _stage_every_family(pg: asyncpg.Connection) -> None:
    await stage_messages(pg, range(1, MESSAGES + 1))
    for sql in _STAGE.values():
        for first in range(1, ROWS + 1, 50):
            await pg.execute(sql, first, min(first + 49, ROWS), T0)


async def _staging_equals_clickhouse(ep: Endpoints, pg: asyncpg.Connection) -> dict[str, str]:
    """Per family: "staged=… loaded=… final=…"; empty when ClickHouse equals staging."""
    problems: dict[str, str] = {}
    for family in FAMILIES:
        staged = await pg.fetchval(f"SELECT count(*) FROM {family.staging_table}")
        pending = await pending_rows(pg, family.staging_table)
        final = await ch_value(ep, f"SELECT count() FROM {family.target_table} FINAL")
        if pending or final != staged:
            problems[family.name] = f"staged={staged} pending={pending} clickhouse={final}"
    invocations = await pg.fetchval("SELECT sum(invocations) FROM command_usage")
    shown = await ch_value(ep, "SELECT sum(invocations) FROM command_usage FINAL")
    if shown != invocations:
        problems["command_usage invocations"] = f"staged={invocations} clickhouse={shown}"
    return problems


async def test_fault_clickhouse_down_during_etl_run(
    own_clickhouse: tuple[DevStack, Endpoints],
) -> None:
    stack, ep = own_clickhouse
    pg = await asyncpg.connect(ep.postgres_dsn)
    try:
        await _stage_every_family(pg)
        pid = stack.status()["clickhouse"].pid
        assert pid is not None
        inserted = 0

        async def kill_clickhouse(at: str, family: Family) -> None:
            # The third message batch reached ClickHouse; the batches claimed beside it and
            # the rollup round have not: ClickHouse dies under all of them.
            nonlocal inserted
            if at == "inserted" and family.name == "message_events":
                inserted += 1
                if inserted == 3:
                    os.kill(pid, signal.SIGKILL)

        failed = await run_once(
            ep.postgres_dsn, ep.clickhouse_url, None, OPTIONS, fault=kill_clickhouse
        )
        assert failed.outcome == "failed", failed
        assert inserted == 3
        loaded_before = sum(failed.stats.rows_moved.values())
        pending = await pending_rows(pg, "message_events")
        assert 0 < pending < MESSAGES  # mid-run: some batches committed, the rest pending

        restarted = await asyncio.to_thread(stack.up)
        assert restarted.clickhouse_url == ep.clickhouse_url  # the same server, data kept
        again = await run_once(ep.postgres_dsn, ep.clickhouse_url, None, OPTIONS)
        assert again.outcome == "caught_up", again.error

        assert await _staging_equals_clickhouse(ep, pg) == {}
        # Loaded exactly once: every staged row moved once over the two runs, none twice.
        assert loaded_before + sum(again.stats.rows_moved.values()) == MESSAGES + ROWS * len(_STAGE)
        assert await ch_value(ep, "SELECT uniqExact(message_id) FROM messages") == MESSAGES
        # The rollups the commands read count every live message once.
        assert await actual_hourly(ep) == await expected_hourly(pg)
        live = MESSAGES - ROWS  # the deletions remove messages 3, 6, …, 900
        for rollup in (
            "message_activity_hourly",
            "message_activity_15m",
            "message_activity_author_days",
            "message_activity_weekly",
        ):
            assert await ch_value(ep, f"SELECT sum(messages) FROM {rollup} FINAL") == live, rollup
        # A third run has nothing left to do.
        idle = await run_once(ep.postgres_dsn, ep.clickhouse_url, None, OPTIONS)
        assert sum(idle.stats.rows_moved.values()) == 0
        assert await _staging_equals_clickhouse(ep, pg) == {}
        after = sum(again.stats.rows_moved.values())
        print(f"rows loaded before the kill={loaded_before}, after={after}")
    finally:
        await pg.close()


async def test_fault_clickhouse_unreachable_from_the_start_is_a_recorded_failed_run(
    migrated: Endpoints,
) -> None:
    """A ClickHouse the run cannot even connect to: the run is recorded as failed in etl_runs
    (what the operator exports and HerwaEtlRunFailed watches), nothing is marked loaded, and
    the next run with ClickHouse back loads everything."""
    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await stage_messages(conn, range(40))
        closed = "http://default@127.0.0.1:1/herwa"  # nothing listens on port 1
        result = await run_once(migrated.postgres_dsn, closed, None, OPTIONS)
        assert result.outcome == "failed"
        assert result.error
        runs = await conn.fetch("SELECT outcome, error FROM etl_runs ORDER BY run_id")
        assert [r["outcome"] for r in runs] == ["failed"]
        assert runs[0]["error"]

        result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
        assert result.outcome == "caught_up"
        assert result.stats.rows_moved["message_events"] == 40
    finally:
        await conn.close()
