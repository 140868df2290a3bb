"""Deletion reaches every table that holds a server's or a member's id, in every store.

The tables are found the way the ETL finds them, from the migrated schema itself, so a table a
later migration adds is checked here without editing this file.
"""

# ruff: noqa: S608 - table and column names come from the stores' own catalogues.

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from herwa.devstack import Endpoints
from herwa.etl import privacy
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client
from tests.etl._support import (
    T0,
    actual_hourly,
    ch_rows,
    ch_value,
    expected_hourly,
    stage_messages,
    stage_other_families,
)

OPTIONS = RunOptions(batch_rows=1000, redis_prefix="t:")
G, OTHER, MEMBER = 1, 2, 100


@pytest.fixture
async def redis(migrated: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(migrated.redis_url)
    yield client
    await client.aclose()


async def _schemas(endpoints: Endpoints) -> dict[str, dict[str, frozenset[str]]]:
    pg = await asyncpg.connect(endpoints.postgres_dsn)
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        return {
            "postgres": await privacy.postgres_tables(pg),
            "clickhouse": await privacy.clickhouse_tables(ch),
        }
    finally:
        await ch.close()
        await pg.close()


# Zones other than UTC, so that the guilds' local weeks have a zone row and are rebuilt.
_ZONES = {G: "Asia/Kathmandu", OTHER: "Pacific/Kiritimati"}


async def _stage_everything(pg: asyncpg.Connection, guild: int) -> None:
    """Every family, a deleted message and an edit of MEMBER's, and other members' rows, in a
    guild whose time zone is set."""
    await pg.execute(
        "INSERT INTO guilds (guild_id, timezone) VALUES ($1, $2)"
        " ON CONFLICT (guild_id) DO UPDATE SET timezone = EXCLUDED.timezone",
        guild,
        _ZONES[guild],
    )
    base = guild * 1000
    # Authors 100..104; 100 is MEMBER. Messages over two UTC days, so two daily rollup days.
    await stage_messages(pg, range(base, base + 60), guild_id=guild, step=timedelta(minutes=50))
    if guild == G:  # its rows have fixed keys: once per test
        await stage_other_families(pg, guild)
    await pg.execute(
        "INSERT INTO message_edits (message_id, edited_at, guild_id, channel_id)"
        " VALUES ($1, $2, $3, 10)",
        base,  # author 100 + base % 5 = MEMBER
        T0 + timedelta(hours=2),
        guild,
    )
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES ($1, $2, 10, $3)",
        base + 5,  # MEMBER's too
        guild,
        T0 + timedelta(hours=3),
    )
    await pg.execute(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), $1, 50, 101, $2, $3, 'leave')",
        guild,
        T0,
        T0 + timedelta(minutes=5),
    )


async def _id_columns(
    endpoints: Endpoints, pg: asyncpg.Connection
) -> dict[str, dict[str, set[str]]]:
    """store → table → its guild and member id columns, read from the catalogues here, not
    through ``privacy``: a table the deletion code fails to find must still be looked at.
    Only the tables kept on purpose (``privacy.KEPT``, each with its reason) are left out."""
    wanted = {privacy.GUILD_COLUMN, *privacy.USER_COLUMNS}
    out: dict[str, dict[str, set[str]]] = {"postgres": {}, "clickhouse": {}}
    rows = await pg.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " AND c.column_name = ANY($1::text[])",
        sorted(wanted),
    )
    for r in rows:
        out["postgres"].setdefault(r["table_name"], set()).add(r["column_name"])
    for table, column in await ch_rows(
        endpoints,
        "SELECT c.table, c.name FROM system.columns AS c INNER JOIN system.tables AS t"
        " ON t.database = c.database AND t.name = c.table"
        " WHERE c.database = currentDatabase() AND t.engine LIKE '%MergeTree'"
        " AND c.name IN {names:Array(String)}",
        names=sorted(wanted),
    ):
        out["clickhouse"].setdefault(str(table), set()).add(str(column))
    for store, kept in privacy.KEPT.items():
        for table in kept:
            out[store].pop(table, None)
    return out


async def _rows_with(
    endpoints: Endpoints, pg: asyncpg.Connection, guild: int, user: int | None
) -> dict[str, int]:
    """Rows left in every table deletion must empty, by "store.table" (zeros left out)."""
    left: dict[str, int] = {}
    for store, tables in (await _id_columns(endpoints, pg)).items():
        targets: list[tuple[str, str]] = []
        for table, columns in sorted(tables.items()):
            if privacy.GUILD_COLUMN not in columns:
                continue
            if user is None:
                g = "guild_id = {g:UInt64}" if store == "clickhouse" else "guild_id = $1"
                targets.append((table, g))
                continue
            for c in sorted(columns & privacy.USER_COLUMNS):
                targets.append(
                    (
                        table,
                        f"guild_id = {{g:UInt64}} AND {c} = {{u:UInt64}}"
                        if store == "clickhouse"
                        else f"guild_id = $1 AND {c} = $2",
                    )
                )
        for table, where in targets:
            if store == "postgres":
                args = (guild,) if user is None else (guild, user)
                n = int(await pg.fetchval(f'SELECT count(*) FROM "{table}" WHERE {where}', *args))
            else:
                n = int(
                    await ch_value(
                        endpoints,
                        f"SELECT count() FROM `{table}` WHERE {where}",
                        g=guild,
                        u=user or 0,
                    )
                )
            if n:
                left[f"{store}.{table}"] = left.get(f"{store}.{table}", 0) + n
    return left


async def test_every_table_holding_an_id_is_classified(migrated: Endpoints) -> None:
    """Fails when a migration adds a table with an id column deletion cannot place."""
    schemas = await _schemas(migrated)
    problems = [p for store, tables in schemas.items() for p in privacy.audit(store, tables)]
    assert problems == []
    # And the deletion plan reaches what the issue found missed: the per-author day rollup
    # (then message_activity_daily) and the week one derived from it, for both.
    ch = privacy.plan_for("clickhouse", schemas["clickhouse"])
    for rollup in ("message_activity_author_days", "message_activity_weekly"):
        assert rollup in ch.guild_tables
        assert (rollup, "author_id") in ch.user_tables
    # A table the audit would refuse: an unknown id column, a member id without guild_id.
    assert privacy.audit("postgres", {"x": frozenset({"guild_id", "member_id"})})
    assert privacy.audit("clickhouse", {"y": frozenset({"user_id", "day"})})


async def test_guild_deletion_leaves_no_row_in_any_table_or_cache(
    migrated: Endpoints, pg: asyncpg.Connection, redis: Redis
) -> None:
    await _stage_everything(pg, G)
    await _stage_everything(pg, OTHER)
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, redis, OPTIONS)
    assert first.outcome == "caught_up", first.error
    for table in (
        "message_activity_author_days",
        "message_local_weeks",
        "message_local_weeks_zone",
    ):
        assert (
            await ch_value(
                migrated, f"SELECT count() FROM {table} FINAL WHERE guild_id = {{g:UInt64}}", g=G
            )
            > 0
        ), table
    # Cached replies and an open voice session of both guilds, as the bot keeps them.
    for guild in (G, OTHER):
        await redis.set(f"t:cmdresult:{guild}:leaderboard:abc", b"reply")
        await redis.hset(f"t:bot:voice:{guild}", "101", b"session")
        await redis.sadd("t:bot:voice:guilds", str(guild))
    # With the tombstone, as the bot's /privacy command records both: the guild keeps its
    # guilds row (its settings), and no later run writes its local weeks again.
    await pg.execute("INSERT INTO deletion_requests (scope, guild_id) VALUES ('guild', $1)", G)
    await pg.execute("INSERT INTO guild_tombstones (guild_id) VALUES ($1)", G)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, redis, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.deletions == 1
    assert await _rows_with(migrated, pg, G, None) == {}
    assert await redis.keys(f"t:cmdresult:{G}:*") == []
    assert await redis.exists(f"t:bot:voice:{G}") == 0
    assert await redis.smembers("t:bot:voice:guilds") == {str(OTHER).encode()}
    # The other guild is untouched, in every store.
    assert len(await _rows_with(migrated, pg, OTHER, None)) > 5
    assert await redis.keys(f"t:cmdresult:{OTHER}:*") != []


# The live figures of a guild's other members: per day (summed over the bot flag), per week as
# the deletion's recompute rewrites them from the days, and their local weeks from those.
_OTHERS_FIGURES = (
    "SELECT day, author_id, sum(messages) FROM message_activity_author_days FINAL"
    " WHERE guild_id = {g:UInt64} AND author_id != {u:UInt64} AND messages > 0"
    " GROUP BY day, author_id ORDER BY day, author_id",
    "SELECT week, author_id, messages, first_at, last_at FROM message_activity_weekly FINAL"
    " WHERE guild_id = {g:UInt64} AND author_id != {u:UInt64} AND messages > 0"
    " ORDER BY week, author_id",
    "SELECT tz, author_id, weeks FROM message_local_weeks FINAL"
    " WHERE guild_id = {g:UInt64} AND author_id != {u:UInt64} AND notEmpty(weeks)"
    " ORDER BY tz, author_id",
)


async def test_member_deletion_leaves_no_row_with_their_id(
    migrated: Endpoints, pg: asyncpg.Connection, redis: Redis
) -> None:
    await _stage_everything(pg, G)
    await _stage_everything(pg, OTHER)
    # Twice: the second run deletes the local weeks of the zone the first one moved G from.
    for _ in range(2):
        await run_once(migrated.postgres_dsn, migrated.clickhouse_url, redis, OPTIONS)
    others_before = [await ch_rows(migrated, sql, g=G, u=MEMBER) for sql in _OTHERS_FIGURES]
    assert all(others_before)
    await redis.set(f"t:cmdresult:{G}:leaderboard:abc", b"reply")
    await pg.execute(
        "INSERT INTO deletion_requests (scope, guild_id, user_id) VALUES ('user', $1, $2)",
        G,
        MEMBER,
    )
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, redis, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.deletions == 1
    # Not even zero-message rollup rows keep their id.
    assert await _rows_with(migrated, pg, G, MEMBER) == {}
    # Their edits and deletions went with their messages (ids 1000 and 1005, see above).
    for table in ("message_edits", "message_deletions"):
        mine = "message_id IN (1000, 1005)"
        assert await pg.fetchval(f"SELECT count(*) FROM {table} WHERE {mine}") == 0
        assert await ch_value(migrated, f"SELECT count() FROM {table} WHERE {mine}") == 0
    # Everybody else's figures are exactly what they were, and the hourly rollup is exact.
    for sql, before in zip(_OTHERS_FIGURES, others_before, strict=True):
        assert await ch_rows(migrated, sql, g=G, u=MEMBER) == before, sql
    assert await actual_hourly(migrated) == await expected_hourly(pg)
    assert len(await _rows_with(migrated, pg, OTHER, MEMBER)) >= 4
    assert await redis.keys(f"t:cmdresult:{G}:*") == []


async def test_a_table_a_later_migration_adds_is_deleted_from_too(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    # Two member columns: a row goes when either names the member.
    await pg.execute(
        "CREATE TABLE later_thing (guild_id bigint, user_id bigint, author_id bigint, n int)"
    )
    await pg.execute(
        "INSERT INTO later_thing VALUES (1, 100, 7, 1), (1, 101, 7, 2), (1, 102, 100, 5),"
        " (2, 100, 7, 3), (3, 100, 7, 4)"
    )
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        await ch.command(
            "CREATE TABLE later_thing (guild_id UInt64, author_id UInt64, n UInt32)"
            " ENGINE = MergeTree ORDER BY guild_id"
        )
        await ch.command(
            "INSERT INTO later_thing VALUES (1, 100, 1), (1, 101, 2), (2, 100, 3), (3, 100, 4)"
        )
    finally:
        await ch.close()
    await pg.execute(
        "INSERT INTO deletion_requests (scope, guild_id, user_id) VALUES ('user', 1, 100)"
    )
    await pg.execute("INSERT INTO deletion_requests (scope, guild_id) VALUES ('guild', 2)")
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    assert result.stats.deletions == 2
    assert [tuple(r) for r in await pg.fetch("SELECT * FROM later_thing ORDER BY n")] == [
        (1, 101, 7, 2),
        (3, 100, 7, 4),
    ]
    assert await ch_rows(migrated, "SELECT * FROM later_thing ORDER BY n") == [
        (1, 101, 2),
        (3, 100, 4),
    ]
