"""Exactly-once loading under injected crashes, the run lock, deadlines and the run log."""

# ruff: noqa: S608 - table names in test SQL are literals from the test itself.

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from herwa.bot.snapshots import UPSERT as SNAPSHOT_UPSERT
from herwa.config import Transfer
from herwa.devstack import Endpoints
from herwa.etl import lock
from herwa.etl.families import FAMILIES, Family
from herwa.etl.runner import RunOptions, RunResult, run_once
from herwa.etl.sync import FAULT_POINTS
from herwa.stores import clickhouse_url_client
from tests.etl._support import (
    T0,
    actual_hourly,
    ch_value,
    clickhouse,
    expected_hourly,
    pending_rows,
    stage_messages,
    stage_other_families,
)

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=60, retention_hours=72)


class InjectedCrash(RuntimeError):
    pass


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
    assert await pending_rows(pg, "message_events") == 0
    staged = await pg.fetchval("SELECT count(*) FROM message_events")
    assert await ch_value(endpoints, "SELECT count() FROM messages FINAL") == staged
    assert await ch_value(endpoints, "SELECT uniqExact(message_id) FROM messages") == staged
    assert await actual_hourly(endpoints) == await expected_hourly(pg)
    live = await pg.fetchval(
        "SELECT count(*) FROM message_events m WHERE NOT EXISTS "
        "(SELECT 1 FROM message_deletions d WHERE d.message_id = m.message_id)"
    )
    assert await ch_value(endpoints, "SELECT sum(messages) FROM message_activity_15m FINAL") == live
    for rollup in ("message_activity_author_days", "message_activity_weekly"):
        sql = f"SELECT sum(messages) FROM {rollup} FINAL"
        assert await ch_value(endpoints, sql) == live, rollup


async def _restore_behind(
    endpoints: Endpoints,
    pg: asyncpg.Connection,
    staging_table: str,
    loaded_table: str | None,
    ahead: int = 1 << 40,
) -> None:
    """A restore into a cluster whose transaction ids are far behind, emulated by moving every
    id of the old cluster up by ``ahead``: the staged rows', the marks, the rollups' progress,
    and the batch bounds the loaded rows carry in ClickHouse (``loaded_table``'s
    loaded_batch, if given)."""
    for table, column in (
        (staging_table, "staged_xid"),
        ("etl_low_water", "staged_xid"),
        ("etl_rollup_progress", "loaded_batch"),
    ):
        await pg.execute(
            f"UPDATE {table} SET {column} = ({column}::text::bigint + {ahead})::text::xid8"
        )
    if loaded_table is None:
        return
    async with clickhouse(endpoints.clickhouse_url) as ch:
        await ch.command(  # type: ignore[attr-defined]
            f"ALTER TABLE {loaded_table} UPDATE loaded_batch = loaded_batch + {ahead} WHERE 1"
            " SETTINGS mutations_sync = 2"
        )


@pytest.mark.parametrize("transfer", ["pull", "push"])
async def test_a_run_loads_every_family_once(
    migrated: Endpoints, pg: asyncpg.Connection, transfer: Transfer
) -> None:
    options = replace(OPTIONS, transfer=transfer)
    await stage_messages(pg, range(1, 251))
    await stage_other_families(pg)
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES (7, 1, 11, $1)",
        T0 + timedelta(days=1),
    )
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
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
        "message_reactions": 1,
        "presence_events": 1,
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
    again = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert sum(again.stats.rows_moved.values()) == 0
    await _assert_exact(migrated, pg)


@pytest.mark.parametrize("point", FAULT_POINTS)
@pytest.mark.parametrize("transfer", ["pull", "push"])
async def test_crash_at_each_step_then_next_run_is_exact(
    migrated: Endpoints, pg: asyncpg.Connection, point: str, transfer: Transfer
) -> None:
    options = replace(OPTIONS, transfer=transfer)
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
        migrated.postgres_dsn, migrated.clickhouse_url, None, options, fault=crash
    )
    assert crashed.outcome == "failed"
    assert "InjectedCrash" in (crashed.error or "")
    loaded = 350 - await pending_rows(pg, "message_events")
    if point == "rolled_up":
        # Batches committed, but the rollups' progress was not recorded: the recompute is owed.
        assert loaded >= 100
        owed = await pg.fetchval(
            "SELECT p.loaded_batch < (SELECT max(staged_xid) FROM etl_low_water"
            " WHERE family = 'message_events') FROM etl_rollup_progress p"
            " WHERE rollup = 'messages'"
        )
        assert owed is True
    else:
        # The crashed batch was rolled back in Postgres: only the first batch is recorded.
        assert loaded == 100
        assert (
            await pg.fetchval(
                "SELECT sum(row_count) FROM etl_low_water WHERE family = 'message_events'"
            )
            == 100
        )
    if point in ("inserted", "before_commit"):  # the crashed batch reached ClickHouse
        assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 200

    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert result.outcome == "caught_up", result.error
    await _assert_exact(migrated, pg)
    # The re-sent batch had the same bytes, so its dedup token made ClickHouse drop it: the
    # table holds no duplicate even before any merge (FINAL would hide one anyway).
    assert await ch_value(migrated, "SELECT count() FROM messages") == 350


@pytest.mark.parametrize("transfer", ["pull", "push"])
async def test_connection_killed_during_the_mark_commit(
    migrated: Endpoints, pg: asyncpg.Connection, transfer: Transfer
) -> None:
    options = replace(OPTIONS, transfer=transfer)
    await stage_messages(pg, range(1, 151))

    async def kill_own_backend(at: str, family: Family) -> None:
        if at == "before_commit" and family.name == "message_events":
            await pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    crashed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, options, fault=kill_own_backend
    )
    assert crashed.outcome == "failed"
    assert await pending_rows(pg, "message_events") == 150
    assert await pg.fetchval("SELECT outcome FROM etl_runs") == "failed"
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
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


async def test_a_run_writes_no_staged_row(migrated: Endpoints, pg: asyncpg.Connection) -> None:
    # The ETL's speed rests on this: a batch is recorded once (postgres migration 0016), its
    # rows are only read. A write would give a row a new version: a new ctid or xmin.
    await stage_messages(pg, range(1, 1001), per_transaction=200)
    versions = "SELECT array_agg((ctid, xmin)::text ORDER BY message_id) FROM message_events"
    before = await pg.fetchval(versions)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.stats.rows_moved["message_events"] == 1000
    assert await pg.fetchval(versions) == before
    await _assert_exact(migrated, pg)


async def test_deadline_leaves_the_rest_for_the_next_run(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 301))
    tight = RunOptions(batch_rows=100, deadline_seconds=1e-6)
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, tight)
    assert first.outcome == "deadline"
    assert await pending_rows(pg, "message_events") == 300
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
        # A run that happened `age` ago: its batch records are dated back.
        await stage_messages(pg, ids)
        result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
        assert result.stats.rows_moved["message_events"] == len(ids)
        await pg.execute(
            f"UPDATE etl_low_water SET recorded_at = now() - interval '{age}'"
            " WHERE recorded_at > now() - interval '1 minute'"
        )
        return result

    await run_and_age(range(1, 11), "10 days")
    # The next run's cleanup finds 1-10 loaded longer ago than the retention: the range below
    # the mark of 10 days ago goes, and the batch records below that mark with it.
    second = await run_and_age(range(11, 21), "1 hour")
    assert second.stats.rows_cleaned["message_events"] == 10
    # Of the records older than the retention, only the mark the cleanup used is left.
    old_records = await pg.fetchval(
        "SELECT count(*) FROM etl_low_water WHERE family = 'message_events'"
        " AND recorded_at < now() - interval '72 hours'"
    )
    assert old_records == 1
    # 21-30 never loaded, captured long ago (an age-based delete on the wrong column would
    # take them); 15, loaded an hour ago, is fixed by hand: the fix makes it pending again.
    await stage_messages(pg, range(21, 31))
    await pg.execute(
        "UPDATE message_events SET captured_at = now() - interval '30 days' WHERE message_id > 20"
    )
    await pg.execute("UPDATE message_events SET channel_id = 99 WHERE message_id = 15")
    assert await pending_rows(pg, "message_events") == 11
    from datetime import UTC, datetime

    from herwa.etl.cleanup import cleanup

    deleted = await cleanup(pg, datetime.now(UTC) - timedelta(hours=72))
    assert deleted["message_events"] == 0
    remaining = [
        r[0] for r in await pg.fetch("SELECT message_id FROM message_events ORDER BY message_id")
    ]
    assert remaining == list(range(11, 31))
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert result.stats.rows_moved["message_events"] == 11
    assert result.stats.rows_cleaned["message_events"] == 0
    assert await pg.fetchval("SELECT count(*) FROM message_events") == 20
    # Every message reached ClickHouse once, the cleaned-up ones included, 15 as fixed.
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 30
    assert await ch_value(migrated, "SELECT uniqExact(message_id) FROM messages") == 30
    assert (
        await ch_value(migrated, "SELECT channel_id FROM messages FINAL WHERE message_id = 15")
        == 99
    )


async def test_each_row_is_joined_to_the_batch_that_loaded_it(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 251))
    started = await pg.fetchval("SELECT now()")
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.stats.rows_moved["message_events"] == 250
    await stage_messages(pg, range(251, 261))  # staged after the run: pending, no batch
    rows = await pg.fetch(
        "SELECT m.message_id, m.staged_xid::text::bigint AS x, b.from_xid::text::bigint AS lo,"
        " b.staged_xid::text::bigint AS hi, b.row_count, b.dedup_token, b.recorded_at"
        " FROM message_events m LEFT JOIN LATERAL etl_batch_of('message_events', m.staged_xid) b"
        " ON true ORDER BY m.message_id"
    )
    loaded, pending = rows[:250], rows[250:]
    assert all(r["hi"] is None for r in pending)
    for r in loaded:
        assert r["lo"] <= r["x"] < r["hi"]
        assert r["recorded_at"] >= started
        token = ["herwa", "messages", f"{r['lo']}-{r['hi']}", str(r["row_count"])]
        assert r["dedup_token"].split(":")[:4] == token
    # Batches of whole staging transactions (50 rows), at least 100 rows each: 100, 100, 50.
    batches = {(r["lo"], r["hi"]): r["row_count"] for r in loaded}
    assert sorted(batches.values()) == [50, 100, 100]
    for (lo, hi), count in batches.items():
        assert sum(1 for r in loaded if lo <= r["x"] < hi) == count


@pytest.mark.parametrize("transfer", ["pull", "push"])
async def test_a_crash_between_the_insert_and_the_batch_record_loads_once(
    migrated: Endpoints, pg: asyncpg.Connection, transfer: Transfer
) -> None:
    options = replace(OPTIONS, transfer=transfer)
    await stage_messages(pg, range(1, 201))

    async def crash_after_insert(at: str, family: Family) -> None:
        if at == "inserted" and family.name == "message_events":
            raise InjectedCrash(at)

    crashed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, options, fault=crash_after_insert
    )
    assert crashed.outcome == "failed"
    # The batch reached ClickHouse, but nothing records it: every row is still pending.
    assert await ch_value(migrated, "SELECT count() FROM messages") == 100
    assert await pending_rows(pg, "message_events") == 200
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM etl_low_water WHERE family = 'message_events' AND row_count > 0"
        )
        == 0
    )
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == 200
    await _assert_exact(migrated, pg)
    # Re-sent with the same token: ClickHouse dropped it, and each batch is recorded once.
    assert await ch_value(migrated, "SELECT count() FROM messages") == 200
    records = await pg.fetch(
        "SELECT row_count, dedup_token FROM etl_low_water WHERE family = 'message_events'"
        " AND row_count > 0"
    )
    assert sorted(r["row_count"] for r in records) == [100, 100]
    assert len({r["dedup_token"] for r in records}) == 2


@pytest.mark.parametrize("upsert_ends", ["commit", "rollback"])
@pytest.mark.parametrize("transfer", ["pull", "push"])
async def test_a_claim_beside_a_concurrent_snapshot_upsert_loads_the_newest_count(
    migrated: Endpoints, pg: asyncpg.Connection, upsert_ends: str, transfer: Transfer
) -> None:
    options = replace(OPTIONS, transfer=transfer)
    # A claim takes no row lock and waits for nothing: it loads the row as committed, and the
    # upsert, once committed, has given the row a new staged_xid for a later batch. Rolled
    # back, the row stays loaded as it was, never stepped over nor left below the mark.
    day = T0.date()
    await pg.execute(SNAPSHOT_UPSERT, 1, day, 40, T0)
    bot = await asyncpg.connect(migrated.postgres_dsn)
    try:
        tx = bot.transaction()
        await tx.start()
        await bot.execute(SNAPSHOT_UPSERT, 1, day, 42, T0 + timedelta(hours=1))
        first = await asyncio.wait_for(
            run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options), 60
        )
        assert first.outcome == "caught_up", first.error
        assert first.stats.rows_moved["member_count_snapshots"] == 1
        await (tx.commit() if upsert_ends == "commit" else tx.rollback())
    finally:
        await bot.close()
    assert await pending_rows(pg, "member_count_snapshots") == (1 if upsert_ends == "commit" else 0)
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert second.outcome == "caught_up", second.error
    assert await pending_rows(pg, "member_count_snapshots") == 0
    expected = 42 if upsert_ends == "commit" else 40
    assert (
        await ch_value(migrated, "SELECT member_count FROM member_count_snapshots FINAL")
        == expected
    )


async def test_a_snapshot_upserted_after_loading_is_loaded_again(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # A second snapshot the same day (two pods at a handover) replaces the loaded one.
    day = T0.date()
    await pg.execute(SNAPSHOT_UPSERT, 1, day, 40, T0)
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert first.stats.rows_moved["member_count_snapshots"] == 1
    await pg.execute(SNAPSHOT_UPSERT, 1, day, 42, T0 + timedelta(hours=1))
    assert await pending_rows(pg, "member_count_snapshots") == 1
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.stats.rows_moved["member_count_snapshots"] == 1
    assert await ch_value(migrated, "SELECT member_count FROM member_count_snapshots FINAL") == 42


async def test_marks_from_another_cluster_stop_the_run_until_reset(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # A restore into another cluster: marks and staged_xids from a server whose transaction
    # ids were far ahead of this one's (1-50 loaded there, 51-100 pending). New rows would be
    # staged below the marks.
    await stage_messages(pg, range(1, 51))
    loaded = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert loaded.stats.rows_moved["message_events"] == 50
    await stage_messages(pg, range(51, 101))
    await _restore_behind(migrated, pg, "message_events", None, ahead=10_000_000)
    await stage_messages(pg, range(101, 151))  # staged on the new cluster, below the marks

    refused = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert refused.outcome == "failed"
    assert "herwa etl reset-low-water" in (refused.error or "")
    code, stderr = await _herwa_etl(migrated, "reset-low-water")
    assert code == 0, stderr
    assert "'message_events': 100" in stderr

    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_events"] == 100
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
        loaded = 1000 - await pending_rows(pg, "message_events")
        if loaded < 700:
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


async def test_the_second_message_batch_is_claimed_while_the_first_loads(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # Every other family is empty: their batches come between the first two message batches in
    # the run's first pass, and must not hold the second claim back until the first is loaded.
    await stage_messages(pg, range(1, 301))
    second_claimed = asyncio.Event()
    claims = 0

    async def hold_first_load(at: str, family: Family) -> None:
        nonlocal claims
        if family.name != "message_events":
            return
        if at == "claimed":
            claims += 1
            if claims == 2:
                second_claimed.set()
        elif at == "inserted" and not second_claimed.is_set():
            # The first batch is in ClickHouse, not yet committed: the loop goes on meanwhile.
            await asyncio.wait_for(second_claimed.wait(), timeout=20)

    result = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=hold_first_load
    )
    assert result.outcome == "caught_up", result.error
    assert claims >= 3
    # Every family's mark moved, the empty ones' included, and nothing was loaded twice.
    marked = await pg.fetchval("SELECT count(DISTINCT family) FROM etl_low_water")
    assert marked == len(FAMILIES)
    await _assert_exact(migrated, pg)


async def test_the_batch_before_the_last_is_rolled_up_while_the_last_loads(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # Four batches: the first two make a round; once the last is claimed, the third gets a
    # round of its own at once instead of waiting for the fourth, to share the loop's end.
    await stage_messages(pg, range(1, 401))
    inserts = 0
    covered = False

    async def hold_last_load(at: str, family: Family) -> None:
        nonlocal inserts, covered
        if at != "inserted" or family.name != "message_events":
            return
        inserts += 1
        if inserts != 4:
            return
        for _ in range(400):
            covered = await pg.fetchval(
                "SELECT p.loaded_batch = (SELECT max(staged_xid) FROM etl_low_water"
                " WHERE family = 'message_events') FROM etl_rollup_progress p"
                " WHERE rollup = 'messages'"
            )
            if covered:
                return
            await asyncio.sleep(0.05)

    result = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=hold_last_load
    )
    assert result.outcome == "caught_up", result.error
    assert inserts == 4
    assert covered, "the third batch's round waited for the loop to end"
    await _assert_exact(migrated, pg)


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
        for rollup in (
            "message_activity_hourly",
            "message_activity_15m",
            "message_activity_author_days",
            "message_activity_weekly",
        ):
            await ch.command(f"TRUNCATE TABLE {rollup}")  # type: ignore[attr-defined]
    # ... when the database is restored into a cluster whose transaction ids are far behind.
    await _restore_behind(migrated, pg, "message_events", "messages")
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


async def test_voice_weeks_owed_before_a_reset_of_the_marks_are_still_written(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await pg.executemany(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), 1, 50, $1, $2, $3, 'leave')",
        [
            (100 + n, T0 + timedelta(days=7 * n), T0 + timedelta(days=7 * n, hours=1))
            for n in range(3)
        ],
    )
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert first.outcome == "caught_up", first.error
    voice_weeks = "SELECT user_id, weeks FROM voice_local_weeks FINAL ORDER BY user_id"
    async with clickhouse(migrated.clickhouse_url) as ch:
        written = (await ch.query(voice_weeks)).result_rows  # type: ignore[attr-defined]
        assert [u for u, _ in written] == [100, 101, 102]
        # The sessions are loaded and committed, their voice weeks still owed: the weeks
        # emptied and the mark set back to what 0023 starts from stand for that ...
        await ch.command("TRUNCATE TABLE voice_local_weeks")  # type: ignore[attr-defined]
    await pg.execute("UPDATE etl_rollup_progress SET loaded_batch = '1' WHERE rollup = 'voice'")
    # ... when the database is restored into a cluster whose transaction ids are far behind.
    await _restore_behind(migrated, pg, "voice_sessions", "voice_sessions")
    code, stderr = await _herwa_etl(migrated, "reset-low-water")
    assert code == 0, stderr

    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    async with clickhouse(migrated.clickhouse_url) as ch:
        assert (await ch.query(voice_weeks)).result_rows == written  # type: ignore[attr-defined]
    assert await pg.fetchval("SELECT count(*) FROM etl_rollup_owed") == 0


async def test_receive_times_within_one_millisecond_stay_apart(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    """Rows keyed by the bot's receive time, a few microseconds apart (a burst replayed after a
    RESUME): Postgres stages each, and ClickHouse keeps each (0011), loaded twice or not."""
    at = T0 + timedelta(microseconds=100)
    for n in range(3):  # 100, 350 and 600 µs past the millisecond
        when = at + timedelta(microseconds=250 * n)
        await pg.execute(
            "INSERT INTO message_reactions (guild_id, channel_id, message_id, user_id, emoji,"
            " event, at) VALUES (1, 11, 1, 100, '👍', 'add', $1)",
            when,
        )
        await pg.execute(
            "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
            " VALUES (1, 100, 'join', $1, $2)",
            when,
            T0 - timedelta(days=400),
        )
        await pg.execute(
            "INSERT INTO guild_events (guild_id, event, at, member_count)"
            " VALUES (1, 'join', $1, 7)",
            when,
        )
    tables = ("message_reactions", "member_events", "guild_events")
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    for table in tables:
        assert await ch_value(migrated, f"SELECT count() FROM {table} FINAL") == 3, table
    # Every row inserted again (as by a batch claimed with other bounds after a crash): the
    # copies share their keys, and FINAL still finds three.
    client = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        for table in tables:
            await client.command(f"INSERT INTO {table} SELECT * FROM {table}")
    finally:
        await client.close()
    for table in tables:
        assert await ch_value(migrated, f"SELECT count() FROM {table}") == 6, table
        assert await ch_value(migrated, f"SELECT count() FROM {table} FINAL") == 3, table
