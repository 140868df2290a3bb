"""Helpers for the ETL tests: staging rows written directly, ClickHouse read back exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from herwa.devstack import Endpoints
from herwa.stores import clickhouse_url_client

T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)  # a Monday


async def stage_messages(
    pg: asyncpg.Connection,
    ids: range,
    *,
    guild_id: int = 1,
    author_of: int = 5,
    start: datetime = T0,
    step: timedelta = timedelta(minutes=7),
    per_transaction: int = 50,
) -> None:
    """Message i: channel 10 + i % 3, author 100 + i % author_of, at start + i * step.

    Staged like the bot does, in transactions of ``per_transaction`` rows: a claim takes whole
    staging transactions, so this decides how the rows can be split into batches.
    """
    rows = [(i, guild_id, 10 + i % 3, 100 + i % author_of, start + i * step) for i in ids]
    for at in range(0, len(rows), per_transaction):
        await pg.executemany(  # one transaction per call
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
            " kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', false)",
            rows[at : at + per_transaction],
        )


async def stage_other_families(pg: asyncpg.Connection, guild_id: int = 1) -> None:
    await pg.execute(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), $1, 50, 100, $2, $3, 'leave')",
        guild_id,
        T0,
        T0 + timedelta(minutes=30),
    )
    await pg.execute(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " VALUES ($1, 100, 'join', $2, $3)",
        guild_id,
        T0,
        T0 - timedelta(days=400),
    )
    await pg.execute(
        "INSERT INTO guild_events (guild_id, event, at, member_count) VALUES ($1, 'join', $2, 7)",
        guild_id,
        T0,
    )
    await pg.execute(
        "INSERT INTO member_count_snapshots (guild_id, day, member_count) VALUES ($1, $2, 7)",
        guild_id,
        T0.date(),
    )
    await pg.execute(
        "INSERT INTO message_edits (message_id, edited_at, guild_id, channel_id)"
        " VALUES (1, $2, $1, 11)",
        guild_id,
        T0 + timedelta(hours=1),
    )
    await pg.execute(
        "INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations)"
        " VALUES ('d1', $1, 'stats', $2, 'ok', 3)",
        guild_id,
        T0,
    )
    await pg.execute(
        "INSERT INTO message_reactions (guild_id, channel_id, message_id, user_id, emoji, event,"
        " at) VALUES ($1, 11, 1, 100, '👍', 'add', $2)",
        guild_id,
        T0 + timedelta(hours=1),
    )
    await pg.execute(
        "INSERT INTO presence_events (guild_id, user_id, at, status, activity_types)"
        " VALUES ($1, 100, $2, 'online', 1)",
        guild_id,
        T0,
    )


@asynccontextmanager
async def clickhouse(url: str) -> AsyncIterator[object]:
    client = await clickhouse_url_client(url)
    try:
        yield client
    finally:
        await client.close()


async def ch_value(endpoints: Endpoints, sql: str, **params: object) -> Any:
    client = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        return (await client.query(sql, parameters=params)).result_rows[0][0]
    finally:
        await client.close()


async def ch_rows(endpoints: Endpoints, sql: str, **params: object) -> list[tuple[object, ...]]:
    client = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        return [tuple(r) for r in (await client.query(sql, parameters=params)).result_rows]
    finally:
        await client.close()


async def expected_hourly(pg: asyncpg.Connection) -> dict[tuple[int, ...], int]:
    """(guild, hour epoch, channel, author) → live (not deleted) messages, from Postgres."""
    rows = await pg.fetch(
        """
        SELECT m.guild_id, extract(epoch FROM date_trunc('hour', m.created_at))::bigint AS h,
               m.channel_id, m.author_id, count(*) AS n
        FROM message_events m
        WHERE NOT EXISTS (SELECT 1 FROM message_deletions d WHERE d.message_id = m.message_id)
        GROUP BY 1, 2, 3, 4
        """
    )
    return {(r["guild_id"], r["h"], r["channel_id"], r["author_id"]): r["n"] for r in rows}


async def actual_hourly(endpoints: Endpoints) -> dict[tuple[int, ...], int]:
    rows = await ch_rows(
        endpoints,
        "SELECT guild_id, toUnixTimestamp(hour), channel_id, author_id, messages"
        " FROM message_activity_hourly FINAL WHERE messages > 0",
    )
    return {tuple(int(v) for v in r[:4]): int(r[4]) for r in rows}  # type: ignore[call-overload]


async def pending_rows(pg: asyncpg.Connection, table: str) -> int:
    """Rows of a staging table not loaded yet: at or above their family's low-water mark."""
    count: int = await pg.fetchval(
        f"SELECT count(*) FROM {table} WHERE staged_xid >= coalesce((SELECT"  # noqa: S608
        " max(staged_xid::text::bigint) FROM etl_low_water WHERE family = $1), 1)::text::xid8",
        table,
    )
    return count
