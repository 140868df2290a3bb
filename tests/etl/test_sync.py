"""Exactly-once loading under injected crashes, the run lock, deadlines and the run log."""

# ruff: noqa: S608 - table names in test SQL are literals from the test itself.

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from herwa.bot.snapshots import UPSERT as SNAPSHOT_UPSERT
from herwa.devstack import Endpoints
from herwa.etl import lock
from herwa.etl.families import FAMILIES, Family
from herwa.etl.runner import RunOptions, RunResult, run_once
from herwa.etl.sync import FAULT_POINTS
from tests.etl._support import (
    T0,
    actual_hourly,
    ch_value,
    clickhouse,
    expected_hourly,
    stage_messages,
    stage_other_families,
)

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=60, retention_hours=72)


class InjectedCrash(RuntimeError):
    pass


@pytest.fixture
async def pg(migrated: Endpoints) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    yield conn
    await conn.close()


async def _herwa_etl(endpoints: Endpoints, action: str) -> tuple[int | None, str]:
    """`herwa etl <action>` as a process, configured like a pod; (exit code, stderr)."""
    env = {**os.environ, **endpoints.as_env(), "HERWA_TELEMETRY_LOG_FORMAT": "console"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.cli",
        "etl",
        action,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    return proc.returncode, stderr.decode()


async def _assert_exact(endpoints: Endpoints, pg: asyncpg.Connection) -> None:
    assert (
        await pg.fetchval("SELECT count(*) FROM message_events WHERE ch_ingested_at IS NULL") == 0
    )
    staged = await pg.fetchval("SELECT count(*) FROM message_events")
    assert await ch_value(endpoints, "SELECT count() FROM messages FINAL") == staged
    assert await ch_value(endpoints, "SELECT uniqExact(message_id) FROM messages") == staged
    assert await actual_hourly(endpoints) == await expected_hourly(pg)
    live = await pg.fetchval(
        "SELECT count(*) FROM message_events m WHERE NOT EXISTS "
        "(SELECT 1 FROM message_deletions d WHERE d.message_id = m.message_id)"
    )
    assert await ch_value(endpoints, "SELECT sum(messages) FROM message_activity_15m FINAL") == live
    assert (
        await ch_value(endpoints, "SELECT sum(messages) FROM message_activity_daily FINAL") == live
    )


async def test_a_run_loads_every_family_once(migrated: Endpoints, pg: asyncpg.Connection) -> None:
    await stage_messages(pg, range(1, 251))
    await stage_other_families(pg)
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES (7, 1, 11, $1)",
        T0 + timedelta(days=1),
    )
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved == {
        "message_events": 250,
        "message_edits": 1,
        "message_deletions": 1,
        "voice_sessions": 1,
        "member_events": 1,
        "guild_events": 1,
        "member_count_snapshots": 1,
        "command_usage": 1,
    }
    for family in FAMILIES:
        assert (
            await ch_value(migrated, f"SELECT count() FROM {family.target_table} FINAL") == 1
            or family.name == "message_events"
        )
    await _assert_exact(migrated, pg)
    # Deleted message 7 is gone from the rollups but kept in the base table.
    assert (
        await ch_value(migrated, "SELECT sum(messages) FROM message_activity_hourly FINAL") == 249
    )
    # A second run finds nothing to do and changes nothing.
    again = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert sum(again.stats.rows_moved.values()) == 0
    await _assert_exact(migrated, pg)


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_crash_at_each_step_then_next_run_is_exact(
    migrated: Endpoints, pg: asyncpg.Connection, point: str
) -> None:
    await stage_messages(pg, range(1, 351))
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES (3, 1, 10, $1), (150, 1, 10, $1)",
        T0 + timedelta(days=1),
    )
    calls = 0
    # Batch steps crash in the second of four batches; "rolled_up" in the first rollup
    # recompute (after it, before its progress is recorded), which runs as soon as the first
    # batch has committed, beside the loop.
    crash_at = 1 if point == "rolled_up" else 2

    async def crash(at: str, family: Family) -> None:
        nonlocal calls
        if family.name != "message_events" or at != point:
            return
        calls += 1
        if calls == crash_at:
            raise InjectedCrash(point)

    crashed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=crash
    )
    assert crashed.outcome == "failed"
    assert "InjectedCrash" in (crashed.error or "")
    marked = await pg.fetchval(
        "SELECT count(*) FROM message_events WHERE ch_ingested_at IS NOT NULL"
    )
    if point == "rolled_up":
        # Batches committed, but the rollups' progress was not recorded: the recompute is owed.
        assert marked >= 100
        owed = await pg.fetchval(
            "SELECT p.loaded_batch < (SELECT max(staged_xid) FROM etl_low_water"
            " WHERE family = 'message_events') FROM etl_rollup_progress p"
            " WHERE rollup = 'messages'"
        )
        assert owed is True
    else:
        # The crashed batch was rolled back in Postgres: only the first batch is marked.
        assert marked == 100
    if point in ("inserted", "before_commit"):  # the crashed batch reached ClickHouse
        assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 200

    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    await _assert_exact(migrated, pg)
    # The re-sent batch had the same bytes, so its dedup token made ClickHouse drop it: the
    # table holds no duplicate even before any merge (FINAL would hide one anyway).
    assert await ch_value(migrated, "SELECT count() FROM messages") == 350


async def test_connection_killed_during_the_mark_commit(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 151))

    async def kill_own_backend(at: str, family: Family) -> None:
        if at == "before_commit" and family.name == "message_events":
            await pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    crashed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=kill_own_backend
    )
    assert crashed.outcome == "failed"
    assert (
        await pg.fetchval("SELECT count(*) FROM message_events WHERE ch_ingested_at IS NULL") == 150
    )
    assert await pg.fetchval("SELECT outcome FROM etl_runs") == "failed"
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    await _assert_exact(migrated, pg)


async def test_a_second_run_exits_at_once_while_one_holds_the_lock(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 201))
    inside, release = asyncio.Event(), asyncio.Event()

    async def hold(at: str, family: Family) -> None:
        if at == "claimed" and not inside.is_set():
            inside.set()
            await release.wait()

    first = asyncio.create_task(
        run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=hold)
    )
    await inside.wait()
    with pytest.raises(lock.LockHeld, match="another ETL run"):
        await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    # The CLI reports the same as a distinct exit code and a clear message.
    code, stderr = await _herwa_etl(migrated, "run")
    assert code == 75, stderr
    assert "another ETL run holds the run lock" in stderr
    release.set()
    result = await first
    assert result.outcome == "caught_up", result.error
    await _assert_exact(migrated, pg)


async def test_a_staging_transaction_that_commits_late_is_not_skipped(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # The hole of watermarks on serial ids: a transaction that began first (lower id) commits
    # after later ones were loaded. Here it holds message 1 open across a whole run.
    late = await asyncpg.connect(migrated.postgres_dsn)
    try:
        tx = late.transaction()
        await tx.start()
        await stage_messages(late, range(1, 2))
        await stage_messages(pg, range(2, 301))
        first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
        assert first.outcome == "caught_up", first.error
        # Nothing at or above the open transaction's id is claimed while it is open, so the
        # rows staged after it wait too, and the lag says so.
        assert first.stats.rows_moved["message_events"] == 0
        assert first.stats.lag_seconds["message_events"] > 0
        await tx.commit()
    finally:
        await late.close()
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.stats.rows_moved["message_events"] == 300
    await _assert_exact(migrated, pg)


async def test_rows_staged_after_a_run_began_are_left_for_the_next_run(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 201))
    staged_during_run = False

    async def stage_more(at: str, family: Family) -> None:
        nonlocal staged_during_run
        if at == "claimed" and family.name == "message_events" and not staged_during_run:
            staged_during_run = True
            await stage_messages(pg, range(201, 251))

    first = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=stage_more
    )
    assert first.outcome == "caught_up", first.error
    loaded = first.stats.rows_moved["message_events"]
    assert 200 <= loaded <= 250
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert loaded + second.stats.rows_moved["message_events"] == 250
    await _assert_exact(migrated, pg)


async def test_every_mark_is_a_hot_update(migrated: Endpoints, pg: asyncpg.Connection) -> None:
    # The ETL's speed rests on this: an index that mentions ch_ingested_at (or a full page)
    # would make marks write every index again (postgres migration 0006).
    await stage_messages(pg, range(1, 1001), per_transaction=200)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.stats.rows_moved["message_events"] == 1000
    # The run's backends have exited, which flushes their statistics.
    counts: tuple[int, int] = (0, 0)
    for _ in range(50):
        await pg.execute("SELECT pg_stat_clear_snapshot()")
        (row,) = await pg.fetch(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = 'message_events'"
        )
        counts = (row["n_tup_upd"], row["n_tup_hot_upd"])
        if counts[0] >= 1000:
            break
        await asyncio.sleep(0.1)
    assert counts == (1000, 1000)


async def test_deadline_leaves_the_rest_for_the_next_run(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 301))
    tight = RunOptions(batch_rows=100, deadline_seconds=1e-6)
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, tight)
    assert first.outcome == "deadline"
    assert (
        await pg.fetchval("SELECT count(*) FROM message_events WHERE ch_ingested_at IS NULL") == 300
    )
    assert first.stats.lag_seconds["message_events"] > 0
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.outcome == "caught_up"
    assert second.stats.lag_seconds["message_events"] == 0
    await _assert_exact(migrated, pg)
    log = await pg.fetch("SELECT * FROM etl_runs ORDER BY run_id")
    assert [r["outcome"] for r in log] == ["deadline", "caught_up"]
    assert json.loads(log[1]["rows_moved"])["message_events"] == 300
    assert json.loads(log[0]["lag_seconds"])["message_events"] > 0
    assert all(r["finished_at"] is not None and r["duration_seconds"] > 0 for r in log)


async def test_cleanup_deletes_only_rows_ingested_past_retention(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    options = RunOptions(batch_rows=100, retention_hours=72)

    async def run_and_age(ids: range, age: str) -> RunResult:
        # A run that happened `age` ago: its marks and its low-water marks are dated back.
        await stage_messages(pg, ids)
        result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
        assert result.stats.rows_moved["message_events"] == len(ids)
        await pg.execute(
            f"UPDATE message_events SET ch_ingested_at = now() - interval '{age}'"
            " WHERE ch_ingested_at > now() - interval '1 minute'"
        )
        await pg.execute(
            f"UPDATE etl_low_water SET recorded_at = now() - interval '{age}'"
            " WHERE recorded_at > now() - interval '1 minute'"
        )
        return result

    await run_and_age(range(1, 11), "10 days")
    # The next run's cleanup finds 1-10 ingested longer ago than the retention.
    second = await run_and_age(range(11, 21), "1 hour")
    assert second.stats.rows_cleaned["message_events"] == 10
    # 21-30 never ingested, captured long ago (an age-based delete on the wrong column would
    # take them); 25 is even placed below every low-water mark, against the ETL's invariant
    # (as a hand-written UPDATE could): cleanup must keep it all the same.
    await stage_messages(pg, range(21, 31))
    await pg.execute(
        "UPDATE message_events SET captured_at = now() - interval '30 days' WHERE message_id > 20"
    )
    await pg.execute("UPDATE message_events SET staged_xid = '2' WHERE message_id = 25")
    from datetime import UTC, datetime

    from herwa.etl.cleanup import cleanup

    deleted = await cleanup(pg, datetime.now(UTC) - timedelta(hours=72))
    assert deleted["message_events"] == 0
    remaining = [
        r[0] for r in await pg.fetch("SELECT message_id FROM message_events ORDER BY message_id")
    ]
    assert remaining == list(range(11, 31))
    # That cleanup also gave 25 a current staged_xid (it would never be claimed below the
    # marks): a normal run loads 21-30, and its cleanup keeps the recently ingested rows.
    assert await pg.fetchval("SELECT staged_xid > '2' FROM message_events WHERE message_id = 25")
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert result.stats.rows_moved["message_events"] == 10
    assert result.stats.rows_cleaned["message_events"] == 0
    assert await pg.fetchval("SELECT count(*) FROM message_events") == 20
    # Every message reached ClickHouse once, the cleaned-up ones included.
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 30
    assert await ch_value(migrated, "SELECT uniqExact(message_id) FROM messages") == 30


@pytest.mark.parametrize("upsert_ends", ["commit", "rollback"])
async def test_a_claim_waits_for_a_concurrent_snapshot_upsert(
    migrated: Endpoints, pg: asyncpg.Connection, upsert_ends: str
) -> None:
    # The claim takes no SKIP LOCKED: a row the bot is re-snapshotting is waited for, then
    # either left for a later batch under its new staged_xid (commit) or claimed as it was
    # (rollback) — never stepped over and left below the low-water mark.
    day = T0.date()
    await pg.execute(SNAPSHOT_UPSERT, 1, day, 40, T0)
    bot = await asyncpg.connect(migrated.postgres_dsn)
    try:
        tx = bot.transaction()
        await tx.start()
        await bot.execute(SNAPSHOT_UPSERT, 1, day, 42, T0 + timedelta(hours=1))
        run = asyncio.create_task(
            run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
        )
        for _ in range(200):
            waiting = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            if waiting or run.done():
                break
            await asyncio.sleep(0.05)
        assert waiting == 1, "the claim should be waiting for the upsert's row lock"
        await (tx.commit() if upsert_ends == "commit" else tx.rollback())
    finally:
        await bot.close()
    first = await run
    assert first.outcome == "caught_up", first.error
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.outcome == "caught_up", second.error
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM member_count_snapshots WHERE ch_ingested_at IS NULL"
        )
        == 0
    )
    expected = 42 if upsert_ends == "commit" else 40
    assert (
        await ch_value(migrated, "SELECT member_count FROM member_count_snapshots FINAL")
        == expected
    )


async def test_marks_from_another_cluster_stop_the_run_until_reset(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # A restore into another cluster: marks and staged_xids from a server whose transaction
    # ids were far ahead of this one's. New rows would be staged below the marks.
    ahead = await pg.fetchval("SELECT pg_current_xact_id()::text::bigint") + 10_000_000
    await stage_messages(pg, range(1, 101))
    await pg.execute(f"UPDATE message_events SET staged_xid = '{ahead}' WHERE message_id <= 50")
    await pg.execute(f"INSERT INTO etl_low_water VALUES ('message_events', '{ahead + 1}', now())")
    await pg.execute(f"UPDATE etl_rollup_progress SET loaded_batch = '{ahead + 1}'")
    await stage_messages(pg, range(101, 151))  # staged on the new cluster, below the marks

    refused = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert refused.outcome == "failed"
    assert "herwa etl reset-low-water" in (refused.error or "")
    code, stderr = await _herwa_etl(migrated, "reset-low-water")
    assert code == 0, stderr
    assert "'message_events': 50" in stderr

    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == 150
    await _assert_exact(migrated, pg)


async def test_message_rollups_are_recomputed_while_the_loop_still_runs(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # 10 batches of 100: a recompute round starts once two batches are owed, beside the loop.
    await stage_messages(pg, range(1, 1001))
    progress_seen: list[int] = []

    async def at_claim(at: str, family: Family) -> None:
        if at != "claimed" or family.name != "message_events":
            return
        claimed = await pg.fetchval(
            "SELECT count(*) FROM message_events WHERE ch_ingested_at IS NOT NULL"
        )
        if claimed < 700:
            return
        # Later claims wait here for a round to have recorded its progress.
        for _ in range(200):
            progress = await pg.fetchval(
                "SELECT loaded_batch::text::bigint FROM etl_rollup_progress"
                " WHERE rollup = 'messages'"
            )
            if progress > 0:
                progress_seen.append(progress)
                return
            await asyncio.sleep(0.05)

    result = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=at_claim
    )
    assert result.outcome == "caught_up", result.error
    assert progress_seen, "no rollup round finished while batches were still being claimed"
    # The run's last round covered the rest.
    await _assert_exact(migrated, pg)
    final = await pg.fetchval(
        "SELECT loaded_batch = (SELECT max(staged_xid) FROM etl_low_water"
        " WHERE family = 'message_events') FROM etl_rollup_progress WHERE rollup = 'messages'"
    )
    assert final is True


async def test_rollups_owed_before_a_reset_of_the_marks_are_still_recomputed(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 101))

    async def crash_in_rollups(at: str, family: Family) -> None:
        if at == "rolled_up":
            raise InjectedCrash(at)

    # The batch is loaded and committed, its rollup recompute is still owed (the crash comes
    # after the recompute, before its progress is recorded: the rollups are emptied to stand
    # for a recompute that never happened) ...
    crashed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=crash_in_rollups
    )
    assert crashed.outcome == "failed"
    async with clickhouse(migrated.clickhouse_url) as ch:
        for rollup in ("message_activity_hourly", "message_activity_15m", "message_activity_daily"):
            await ch.command(f"TRUNCATE TABLE {rollup}")  # type: ignore[attr-defined]
    # ... when the database is restored into a cluster whose transaction ids are far behind:
    # emulated by moving every id of the old cluster up (marks, rows, rollup progress, and the
    # batch bounds the messages carry in ClickHouse).
    ahead = 1 << 40
    for table, column in (
        ("message_events", "staged_xid"),
        ("etl_low_water", "staged_xid"),
        ("etl_rollup_progress", "loaded_batch"),
    ):
        await pg.execute(
            f"UPDATE {table} SET {column} = ({column}::text::bigint + {ahead})::text::xid8"
        )
    async with clickhouse(migrated.clickhouse_url) as ch:
        await ch.command(  # type: ignore[attr-defined]
            f"ALTER TABLE messages UPDATE loaded_batch = loaded_batch + {ahead} WHERE 1"
            " SETTINGS mutations_sync = 2"
        )
    refused = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert "herwa etl reset-low-water" in (refused.error or "")
    code, stderr = await _herwa_etl(migrated, "reset-low-water")
    assert code == 0, stderr

    await stage_messages(pg, range(101, 111))
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == 10
    # The 100 messages of the old cluster are in the rollups as well as the 10 new ones.
    await _assert_exact(migrated, pg)
    assert await pg.fetchval("SELECT count(*) FROM etl_rollup_owed") == 0
