"""Migrations against real Postgres and ClickHouse: apply, re-run, race, and refuse tampering."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from herwa.devstack import Endpoints
from herwa.schema import MigrationError, Store, discover, migrate, pending
from herwa.stores import clickhouse_url_client

STORES: tuple[Store, ...] = ("postgres", "clickhouse")
STAGING_TABLES = {
    "message_events",
    "message_edits",
    "message_deletions",
    "voice_sessions",
    "member_events",
    "guild_events",
    "member_count_snapshots",
    "command_usage",
}


async def _postgres_tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {row["table_name"] for row in rows}
    finally:
        await conn.close()


async def _applied(endpoints: Endpoints) -> tuple[list[int], list[int]]:
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        pg = [
            r["version"]
            for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ]
    finally:
        await conn.close()
    client = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        result = await client.query("SELECT version FROM schema_migrations ORDER BY version")
        ch = [int(row[0]) for row in result.result_rows]
    finally:
        await client.close()
    return pg, ch


async def test_migrate_creates_every_table_and_records_versions(endpoints: Endpoints) -> None:
    report = await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)

    pg_versions = [m.version for m in discover("postgres")]
    ch_versions = [m.version for m in discover("clickhouse")]
    assert report.applied == {"postgres": pg_versions, "clickhouse": ch_versions}
    assert await _applied(endpoints) == (pg_versions, ch_versions)

    tables = await _postgres_tables(endpoints.postgres_dsn)
    assert STAGING_TABLES | {"guilds", "tiers", "entitlements", "opt_outs"} <= tables
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        for table in STAGING_TABLES:
            nullable = await conn.fetchval(
                "SELECT is_nullable FROM information_schema.columns "
                "WHERE table_name = $1 AND column_name = 'ch_ingested_at'",
                table,
            )
            assert nullable == "YES", table
    finally:
        await conn.close()

    client = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        result = await client.query(
            "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
        )
        engines = {str(name): str(engine) for name, engine in result.result_rows}
    finally:
        await client.close()
    assert engines["messages"] == "ReplacingMergeTree"
    assert engines["voice_sessions"] == "ReplacingMergeTree"


async def test_second_run_is_a_no_op(endpoints: Endpoints) -> None:
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    again = await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    assert again.applied == {"postgres": [], "clickhouse": []}
    assert again.current["postgres"] == discover("postgres")[-1].version


def test_concurrent_migrate_commands_both_succeed_with_one_schema(endpoints: Endpoints) -> None:
    env = {**os.environ, **endpoints.as_env(), "HERWA_TELEMETRY_LOG_FORMAT": "console"}
    command = [sys.executable, "-m", "herwa.cli", "migrate"]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    pg, ch = asyncio.run(_applied(endpoints))
    assert pg == [m.version for m in discover("postgres")]
    assert ch == [m.version for m in discover("clickhouse")]


async def test_an_applied_migration_that_changed_is_refused(endpoints: Endpoints) -> None:
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)


async def test_a_database_newer_than_the_release_is_refused(endpoints: Endpoints) -> None:
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="newer than this release"):
        await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)


async def test_pending_lists_what_the_migrate_job_has_still_to_apply(endpoints: Endpoints) -> None:
    everything = {f"{m.store} {m.version:04d}_{m.name}" for s in STORES for m in discover(s)}
    assert set(await pending(endpoints.postgres_dsn, endpoints.clickhouse_url)) == everything
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    assert await pending(endpoints.postgres_dsn, endpoints.clickhouse_url) == []
    # A store ahead of this release (a rolling upgrade's older pods) is current for it.
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
        )
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="differs from the one applied"):
        await pending(endpoints.postgres_dsn, endpoints.clickhouse_url)


def test_wait_holds_a_role_back_until_the_schema_is_current(endpoints: Endpoints) -> None:
    env = {**os.environ, **endpoints.as_env(), "HERWA_TELEMETRY_LOG_FORMAT": "console"}
    command = [sys.executable, "-m", "herwa.cli", "migrate", "--wait"]
    gave_up = subprocess.run(
        [*command, "--timeout", "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert gave_up.returncode == 1
    assert "not current after" in gave_up.stderr
    assert "postgres 0001_initial" in gave_up.stderr
    waiting = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert waiting.stderr is not None
    for line in waiting.stderr:  # it has looked once and found the schema missing
        if "waiting for migrations" in line:
            break
    assert waiting.poll() is None
    asyncio.run(migrate(endpoints.postgres_dsn, endpoints.clickhouse_url))
    assert waiting.wait(timeout=60) == 0


async def test_staging_insert_is_idempotent_on_natural_ids(migrated: Endpoints) -> None:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        insert = (
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
            " kind, is_bot) VALUES (1, 2, 3, 4, now(), 'text', false) ON CONFLICT DO NOTHING"
        )
        await conn.execute(insert)
        await conn.execute(insert)
        assert await conn.fetchval("SELECT count(*) FROM message_events") == 1
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
                " created_at, kind, is_bot) VALUES (5, 2, 3, 4, now(), 'gif', false)"
            )
    finally:
        await conn.close()
