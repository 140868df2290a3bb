"""Deletion requests never starve loading: deduplicated, bounded per run, failures retried."""

from __future__ import annotations

import asyncpg

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from tests.etl._support import ch_value, stage_messages


async def _request(pg: asyncpg.Connection, guild: int, user: int | None = None) -> None:
    if user is None:
        await pg.execute(
            "INSERT INTO deletion_requests (scope, guild_id) VALUES ('guild', $1)", guild
        )
    else:
        await pg.execute(
            "INSERT INTO deletion_requests (scope, guild_id, user_id) VALUES ('user', $1, $2)",
            guild,
            user,
        )


async def test_requests_are_carried_out_once_per_subject(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    for _ in range(3):  # a member who pressed the button three times
        await _request(pg, 1, 100)
    await _request(pg, 1, 101)
    await _request(pg, 2, 100)  # covered by the server's own request below
    await _request(pg, 2)
    await _request(pg, 2, 101)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    assert result.outcome == "caught_up", result.error
    assert result.stats.deletions == 7
    assert result.stats.deletion_subjects == 3
    assert (
        await pg.fetchval("SELECT count(*) FROM deletion_requests WHERE completed_at IS NULL") == 0
    )


async def test_many_requests_take_only_their_share_of_the_deadline(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await pg.executemany(
        "INSERT INTO deletion_requests (scope, guild_id, user_id) VALUES ('user', 1, $1)",
        [(u,) for u in range(1000, 1120)],
    )
    await stage_messages(pg, range(1, 51), guild_id=3)
    options = RunOptions(deadline_seconds=4.0)  # a quarter of it for deletions
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    # Loading was not starved: every staged message is in ClickHouse after this one run.
    assert first.outcome == "caught_up", first.error
    assert first.stats.rows_moved["message_events"] == 50
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 50
    assert 1 <= first.stats.deletions < 120
    assert first.stats.deletions_deferred == 120 - first.stats.deletions
    # The next run takes the next ones, the oldest first; one with a long deadline the rest.
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert second.outcome == "caught_up", second.error
    done = first.stats.deletions + second.stats.deletions
    assert second.stats.deletions >= 1
    oldest = await pg.fetchval(
        "SELECT min(user_id) FROM deletion_requests WHERE completed_at IS NULL"
    )
    assert oldest == 1000 + done
    last = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    assert last.outcome == "caught_up", last.error
    assert last.stats.deletions == 120 - done
    assert (
        await pg.fetchval("SELECT count(*) FROM deletion_requests WHERE completed_at IS NULL") == 0
    )


async def test_a_failing_request_is_retried_later_and_blocks_nothing(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # A request no store accepts: ClickHouse refuses a negative id as UInt64.
    await _request(pg, -5, 100)
    await _request(pg, 1, 100)
    await stage_messages(pg, range(1, 51), guild_id=3)
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    assert first.outcome == "caught_up", first.error
    assert first.stats.rows_moved["message_events"] == 50
    assert first.stats.deletions == 1  # the good request
    assert first.stats.deletions_failed == 1
    poison = await pg.fetchrow(
        "SELECT attempts, last_error, completed_at,"
        " retry_at > now() + interval '50 seconds' AS later"
        " FROM deletion_requests WHERE guild_id = -5"
    )
    assert poison is not None
    assert poison["attempts"] == 1
    assert poison["completed_at"] is None
    assert poison["later"]
    assert "UInt64" in poison["last_error"] or "parse" in poison["last_error"].lower()
    # Not retried before its time ...
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    assert second.stats.deletions_failed == 0
    assert await pg.fetchval("SELECT attempts FROM deletion_requests WHERE guild_id = -5") == 1
    # ... and retried once it is due, waiting longer after each failure.
    await pg.execute("UPDATE deletion_requests SET retry_at = now() WHERE guild_id = -5")
    third = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions())
    assert third.outcome == "caught_up", third.error
    assert third.stats.deletions_failed == 1
    row = await pg.fetchrow(
        "SELECT attempts, retry_at > now() + interval '110 seconds' AS later"
        " FROM deletion_requests WHERE guild_id = -5"
    )
    assert row is not None
    assert row["attempts"] == 2
    assert row["later"]
