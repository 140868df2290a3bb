"""Opt-outs, deletion requests in both stores, and the atomic Redis usage drain."""

# ruff: noqa: S608 - table names in test SQL are literals from the test itself.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from herwa import usage
from herwa.devstack import Endpoints
from herwa.etl.families import Family
from herwa.etl.runner import RunOptions, run_once
from tests.etl._support import T0, actual_hourly, ch_value, expected_hourly, stage_messages

OPTIONS = RunOptions(batch_rows=1000)


@pytest.fixture
async def redis(migrated: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(migrated.redis_url)
    yield client
    await client.aclose()


async def _stage_user_data(pg: asyncpg.Connection, guild_id: int) -> None:
    await stage_messages(pg, range(guild_id * 1000, guild_id * 1000 + 50), guild_id=guild_id)
    await pg.execute(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) SELECT gen_random_uuid(), $1, 50, 100 + g, $2, $3, 'leave'"
        " FROM generate_series(0, 4) g",
        guild_id,
        T0,
        T0 + timedelta(minutes=10),
    )
    await pg.execute(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " SELECT $1, 100 + g, 'join', $2, $2 FROM generate_series(0, 4) g",
        guild_id,
        T0,
    )


async def test_opted_out_users_events_are_never_loaded(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await pg.execute("INSERT INTO opt_outs (guild_id, user_id) VALUES (1, 101)")
    await _stage_user_data(pg, 1)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.stats.rows_skipped["message_events"] == 10
    assert result.stats.rows_skipped["voice_sessions"] == 1
    for table, column in (
        ("messages", "author_id"),
        ("voice_sessions", "user_id"),
        ("member_events", "user_id"),
        ("message_activity_hourly", "author_id"),
    ):
        assert await ch_value(migrated, f"SELECT count() FROM {table} WHERE {column} = 101") == 0
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 40
    # The opted-out user's staged rows are gone from Postgres too, not merely skipped.
    assert await pg.fetchval("SELECT count(*) FROM message_events WHERE author_id = 101") == 0


async def test_rows_the_run_start_purge_could_not_see_are_not_loaded_either(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # 200 messages in 4 staging transactions: 2 batches of 100 (authors 100-104, 20 each).
    await stage_messages(pg, range(1, 201))
    await pg.execute("INSERT INTO opt_outs (guild_id, user_id) VALUES (1, 101)")
    first_claim = True

    async def during_the_run(at: str, family: Family) -> None:
        nonlocal first_claim
        if at != "claimed" or family.name != "message_events" or not first_claim:
            return
        first_claim = False
        # The run's purge is done and its first batch claimed. Now member 100 opts out while
        # rows of theirs wait in the second batch, and a bot pod of an older release (which
        # does not filter) stages a message of member 101, opted out before the run.
        await pg.execute("INSERT INTO opt_outs (guild_id, user_id) VALUES (1, 100)")
        await stage_messages(pg, range(1001, 1002), author_of=1000)  # author 100 + 1001 % 1000

    options = RunOptions(batch_rows=100)
    result = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, options, fault=during_the_run
    )
    assert result.outcome == "caught_up", result.error
    # Member 100's rows of the first batch were claimed before the opt-out: loaded. None after.
    assert await ch_value(migrated, "SELECT count() FROM messages WHERE author_id = 100") == 20
    assert (
        await ch_value(
            migrated, "SELECT count() FROM messages WHERE author_id = 100 AND message_id > 100"
        )
        == 0
    )
    assert await ch_value(migrated, "SELECT count() FROM messages WHERE author_id = 101") == 0
    # 40 rows of 101 at the start, 20 of 100 in the second batch, the late row of 101.
    assert result.stats.rows_skipped["message_events"] == 40 + 20 + 1
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 200 - 40 - 20
    assert await actual_hourly(migrated) == await expected_hourly(pg)


async def test_user_deletion_request_removes_data_from_both_stores(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await _stage_user_data(pg, 1)
    await _stage_user_data(pg, 2)
    await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    # More of the user's rows arrive, un-ingested, before the request is carried out.
    await stage_messages(pg, range(5000, 5010), guild_id=1, author_of=1)  # all by user 100
    await pg.execute(
        "INSERT INTO deletion_requests (scope, guild_id, user_id) VALUES ('user', 1, 100)"
    )
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.stats.deletions == 1
    for table, column in (
        ("messages", "author_id"),
        ("voice_sessions", "user_id"),
        ("member_events", "user_id"),
        ("message_activity_hourly", "author_id"),
    ):
        assert (
            await ch_value(
                migrated, f"SELECT count() FROM {table} WHERE guild_id = 1 AND {column} = 100"
            )
            == 0
        )
        # The same user in another guild is untouched.
        assert (
            await ch_value(
                migrated, f"SELECT count() FROM {table} FINAL WHERE guild_id = 2 AND {column} = 100"
            )
            > 0
        )
    for table, column in (
        ("message_events", "author_id"),
        ("voice_sessions", "user_id"),
        ("member_events", "user_id"),
    ):
        assert (
            await pg.fetchval(f"SELECT count(*) FROM {table} WHERE guild_id = 1 AND {column} = 100")
            == 0
        )
    # Rollups were recomputed: heatmap totals equal the remaining messages exactly.
    assert await actual_hourly(migrated) == await expected_hourly(pg)
    assert (
        await ch_value(
            migrated, "SELECT sum(messages) FROM message_activity_15m FINAL WHERE guild_id = 1"
        )
        == 40
    )
    assert await pg.fetchval("SELECT completed_at IS NOT NULL FROM deletion_requests")


async def test_guild_deletion_request_removes_every_table(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await _stage_user_data(pg, 1)
    await _stage_user_data(pg, 2)
    await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    await pg.execute("INSERT INTO deletion_requests (scope, guild_id) VALUES ('guild', 1)")
    await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    for table in (
        "messages",
        "voice_sessions",
        "member_events",
        "message_activity_hourly",
        "message_activity_15m",
    ):
        assert await ch_value(migrated, f"SELECT count() FROM {table} WHERE guild_id = 1") == 0
        assert await ch_value(migrated, f"SELECT count() FROM {table} WHERE guild_id = 2") > 0
    assert await pg.fetchval("SELECT count(*) FROM message_events WHERE guild_id = 1") == 0
    assert await pg.fetchval("SELECT count(*) FROM message_events WHERE guild_id = 2") == 50


async def _legacy_record(
    redis: Redis, guild_id: int, command: str, outcome: str, at: datetime
) -> None:
    """An invocation counted the way releases before Postgres usage recording did."""
    epoch = int(at.timestamp())
    key = usage.live_key("t:", epoch - epoch % 3600)
    await redis.hincrby(key, f"{guild_id}|{outcome}|{command}", 1)


async def test_usage_drain_loses_no_increment_and_survives_a_crashed_drain(
    migrated: Endpoints, pg: asyncpg.Connection, redis: Redis
) -> None:
    at = datetime(2024, 3, 4, 10, 30, tzinfo=UTC)
    recorded = 0

    async def record_many(n: int) -> None:
        nonlocal recorded
        for i in range(n):
            await _legacy_record(redis, 1, "stats" if i % 2 else "top users", "ok", at)
            recorded += 1

    # Drains race with a writer; every increment must land exactly once.
    writer = asyncio.create_task(record_many(600))
    drained = 0
    while not writer.done():
        drained += await usage.drain(redis, "t:", pg)
        await asyncio.sleep(0)
    await writer
    # A crashed drain: renamed and copied into Postgres, but the key was never deleted.
    await _legacy_record(redis, 2, "stats", "denied", at + timedelta(hours=1))
    next_hour = int((at + timedelta(hours=1)).replace(minute=0).timestamp())
    await redis.rename(usage.live_key("t:", next_hour), f"t:usage-draining:crashed:{next_hour}")
    await pg.execute(
        "INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations)"
        " VALUES ('crashed', 2, 'stats', $1, 'denied', 1)",
        at.replace(minute=0) + timedelta(hours=1),
    )
    drained += await usage.drain(redis, "t:", pg)
    assert await pg.fetchval("SELECT sum(invocations) FROM command_usage WHERE guild_id = 1") == 600
    assert await pg.fetchval("SELECT sum(invocations) FROM command_usage WHERE guild_id = 2") == 1
    assert await redis.keys("t:*") == []
    # …and they reach ClickHouse through the ordinary claim-and-mark path.
    await run_once(
        migrated.postgres_dsn,
        migrated.clickhouse_url,
        None,
        RunOptions(batch_rows=1000, redis_prefix="t:"),
    )
    assert (
        await ch_value(
            migrated, "SELECT sum(invocations) FROM command_usage FINAL WHERE guild_id = 1"
        )
        == 600
    )
