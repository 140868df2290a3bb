"""A small data set through the real ETL: members join, write, and some messages are deleted
between two runs, so that the rollups' recompute after a deletion is exercised."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg

from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once

CHANNEL = 10


def Z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def load_then_delete(
    endpoints: Endpoints,
    guild: int,
    *,
    members: Iterable[int],
    joined: datetime,
    messages: Iterable[tuple[int, int, str]],
    deleted: Iterable[int],
    deleted_at: datetime,
) -> None:
    """``members`` join at ``joined`` and write ``messages`` (id, author, UTC time); one ETL run;
    the ``deleted`` messages are deleted at ``deleted_at``; a second run."""
    pg = await asyncpg.connect(endpoints.postgres_dsn)
    options = RunOptions(batch_rows=1000)
    try:
        await pg.executemany(
            "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
            " VALUES ($1, $2, 'join', $3, $3)",
            [(guild, u, joined) for u in members],
        )
        await pg.executemany(
            "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
            " created_at, kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', false)",
            [(i, guild, CHANNEL, a, Z(t)) for i, a, t in messages],
        )
        first = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, options)
        assert first.outcome == "caught_up", first.error
        await pg.executemany(
            "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
            " VALUES ($1, $2, $3, $4)",
            [(i, guild, CHANNEL, deleted_at) for i in deleted],
        )
        second = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, options)
        assert second.outcome == "caught_up", second.error
    finally:
        await pg.close()
