"""Deletion requests, carried out in both stores; every step is idempotent and re-run safe.

A request is marked completed only after every step succeeded, so a crash part way simply
repeats the request on the next run. For a user the order matters: the rollup buckets to
recompute are found from the user's own rollup rows, which survive until the recompute, so a
re-run after a crash still finds them even though the base rows are already gone.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from herwa.etl import rollups
from herwa.etl.families import FAMILIES

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# Every family's tables, from the one registry, so a new family is covered by deletion too.
_STAGING_TABLES = tuple(family.staging_table for family in FAMILIES)
# ClickHouse tables holding a guild's data; all are wiped by a guild request.
_GUILD_TABLES = (
    *(family.target_table for family in FAMILIES),
    "message_activity_hourly",
    "message_activity_15m",
)


@dataclass(frozen=True)
class DeletionRequest:
    request_id: int
    scope: str
    guild_id: int
    user_id: int | None


async def pending(pg: asyncpg.Connection) -> list[DeletionRequest]:
    rows = await pg.fetch(
        "SELECT request_id, scope, guild_id, user_id FROM deletion_requests "
        "WHERE completed_at IS NULL ORDER BY requested_at, request_id"
    )
    return [DeletionRequest(r["request_id"], r["scope"], r["guild_id"], r["user_id"]) for r in rows]


async def carry_out_all(pg: asyncpg.Connection, ch: AsyncClient) -> int:
    done = 0
    for request in await pending(pg):
        await carry_out(pg, ch, request)
        done += 1
    return done


async def carry_out(pg: asyncpg.Connection, ch: AsyncClient, request: DeletionRequest) -> None:
    if request.scope == "guild":
        await _delete_guild(pg, ch, request.guild_id)
    else:
        if request.user_id is None:  # excluded by the table's CHECK; kept for the type checker
            raise ValueError(f"deletion request {request.request_id} has no user_id")
        await _delete_user(pg, ch, request.guild_id, request.user_id)
    await pg.execute(
        "UPDATE deletion_requests SET completed_at = now() WHERE request_id = $1",
        request.request_id,
    )


async def _delete_guild(pg: asyncpg.Connection, ch: AsyncClient, guild_id: int) -> None:
    async with pg.transaction():
        for table in _STAGING_TABLES:
            await pg.execute(f"DELETE FROM {table} WHERE guild_id = $1", guild_id)
    for table in _GUILD_TABLES:
        await _ch_delete(ch, table, "guild_id = {g:UInt64}", {"g": guild_id})


async def _delete_user(
    pg: asyncpg.Connection, ch: AsyncClient, guild_id: int, user_id: int
) -> None:
    async with pg.transaction():
        # Edits and deletions carry no author: they go with the user's messages.
        for table in ("message_edits", "message_deletions"):
            await pg.execute(
                f"DELETE FROM {table} WHERE guild_id = $1 AND message_id IN "
                "(SELECT message_id FROM message_events WHERE guild_id = $1 AND author_id = $2)",
                guild_id,
                user_id,
            )
        await pg.execute(
            "DELETE FROM message_events WHERE guild_id = $1 AND author_id = $2", guild_id, user_id
        )
        for table in ("voice_sessions", "member_events"):
            await pg.execute(
                f"DELETE FROM {table} WHERE guild_id = $1 AND user_id = $2", guild_id, user_id
            )
    params = {"g": guild_id, "u": user_id}
    by_user_messages = (
        "guild_id = {g:UInt64} AND message_id IN (SELECT message_id FROM messages "
        "WHERE guild_id = {g:UInt64} AND author_id = {u:UInt64})"
    )
    await _ch_delete(ch, "message_edits", by_user_messages, params)
    await _ch_delete(ch, "message_deletions", by_user_messages, params)
    await _ch_delete(ch, "messages", "guild_id = {g:UInt64} AND author_id = {u:UInt64}", params)
    await _ch_delete(ch, "voice_sessions", "guild_id = {g:UInt64} AND user_id = {u:UInt64}", params)
    await _ch_delete(ch, "member_events", "guild_id = {g:UInt64} AND user_id = {u:UInt64}", params)
    result = await ch.query(
        "SELECT DISTINCT guild_id, toUnixTimestamp(hour) FROM message_activity_hourly FINAL "
        "WHERE guild_id = {g:UInt64} AND author_id = {u:UInt64} AND messages > 0",
        parameters=params,
    )
    await rollups.recompute(ch, [(int(g), int(h)) for g, h in result.result_rows])
    await _ch_delete(
        ch, "message_activity_hourly", "guild_id = {g:UInt64} AND author_id = {u:UInt64}", params
    )


async def _ch_delete(ch: AsyncClient, table: str, where: str, params: dict[str, int]) -> None:
    # Lightweight DELETE masks the rows at once (FINAL reads honour the mask); the default
    # lightweight_deletes_sync waits for it, so the request is not marked done too early.
    await ch.command(f"DELETE FROM {table} WHERE {where}", parameters=params)
