"""Deletion requests, carried out in every store that holds the subject's data.

What to delete is derived from the schema itself when a run starts, not from a list kept here:
every Postgres table and every ClickHouse MergeTree table with a ``guild_id`` column loses a
deleted server's rows, every one that also has a user column (:data:`USER_COLUMNS`) loses a
deleted member's rows, and every one keyed by ``message_id`` without a user column (edits,
deletions) loses the rows of that member's messages. A table a new migration adds is therefore
covered without touching this module; only a table that must *keep* its rows is named, in
:data:`KEPT`, with the reason. :func:`audit` (run by the tests against the migrated schema)
fails for a table holding an id column this module cannot classify, so a new kind of id is
decided on, not silently kept. The Redis caches that can hold a server's figures go too.

Every step is idempotent. A request is marked completed only after every step succeeded, so a
crash part way repeats it on the next run. For a member the order matters: the rollup buckets
to recompute are found from the member's own hourly rollup rows, which are deleted last, so a
re-run after a crash still finds them even though the raw rows are already gone; the recompute
then writes zero rows for the member, which the last step removes with the rest of their rows.

Scheduling (:func:`carry_out_due`): requests are grouped per subject (a server, or a member of
a server; a server's request covers its members' requests), carried out oldest first within a
time budget the runner gives out of the run's deadline, and a subject that fails is recorded
with its error and retried after a growing delay, while the run goes on loading.
"""

# ruff: noqa: S608 - identifiers in SQL come from the stores' own catalogues; values are bound.

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from redis.asyncio import Redis

from herwa.etl import rollups

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

GUILD_COLUMN = "guild_id"
# Columns that hold the id of a member (a Discord user) in a table that also has guild_id.
USER_COLUMNS = frozenset({"user_id", "author_id"})
MESSAGE_COLUMN = "message_id"
# Where a store keeps the messages themselves, with their author: rows keyed by message id
# alone (edits, deletions) are found through it.
MESSAGE_SOURCE = {"postgres": "message_events", "clickhouse": "messages"}

# Tables holding a guild or user id whose rows deletion keeps on purpose, and why.
KEPT: Mapping[str, Mapping[str, str]] = {
    "postgres": {
        "guilds": "the server's settings chosen by its admins (time zone, tracked channels)",
        "channels": "the channel directory (names, thread parents): no activity, and the bot "
        "needs it to attribute thread messages after a RESUME",
        "entitlements": "the subscription its GuildSubscription owns: billing, not activity",
        "opt_outs": "a member's choice not to be recorded: deleting it would record them again",
        "leaderboard_hidden": "a member's choice not to be named on leaderboards: deleting it "
        "would name them again",
        "deletion_requests": "the record that the deletion was asked for and carried out",
        "guild_tombstones": "what keeps a deleted server from being recorded again",
        "quota_usage": "the month's quota use: billing, and deleting it would reset the quota",
    },
    "clickhouse": {},
}
# Id columns that identify neither a server nor a person; anything else named like an id
# (``*_id``, ``*_by``) in a table that is not kept makes :func:`audit` fail.
OTHER_IDS = frozenset(
    {
        "message_id",
        "channel_id",
        "thread_id",
        "parent_id",
        "session_id",
        "drain_id",
        "run_id",
        "shard_id",
        "dead_letter_id",
        "until_id",  # bot_backfill_pending: the message a backfill reads history back to
    }
)
_ID_COLUMN = re.compile(r"(^|_)(id|by)$")

# Redis keys of the bot that hold a server's data: cached command replies (bot/commands/_cache.py;
# not imported, so that an ETL run never pays for importing discord.py) and open voice sessions
# (bot/app.py's module docstring).
_REPLIES = "{prefix}cmdresult:{guild}:*"
_VOICE_KEY = "{prefix}bot:voice:{guild}"
_VOICE_GUILDS = "{prefix}bot:voice:guilds"

# A failed subject waits this long before its next attempt, doubling per attempt up to the cap.
RETRY_FIRST_SECONDS = 60
RETRY_MAX_SECONDS = 6 * 3600

Tables = Mapping[str, frozenset[str]]  # table -> its column names


@dataclass(frozen=True)
class DeletionRequest:
    request_id: int
    scope: str
    guild_id: int
    user_id: int | None


@dataclass(frozen=True)
class Subject:
    """Whose data: a whole server (``user_id`` None) or one member of it."""

    guild_id: int
    user_id: int | None

    def __str__(self) -> str:
        return f"guild {self.guild_id}" + ("" if self.user_id is None else " member")


@dataclass(frozen=True)
class StorePlan:
    guild_tables: tuple[str, ...]
    user_tables: tuple[tuple[str, str], ...]  # (table, a user column of it)
    message_tables: tuple[str, ...]  # keyed by message id, without a user column


@dataclass(frozen=True)
class Plan:
    postgres: StorePlan
    clickhouse: StorePlan


@dataclass
class DeletionOutcome:
    completed: int = 0  # requests marked completed
    subjects: int = 0  # subjects carried out (several requests may share one)
    failed: int = 0  # subjects that failed; retried by a later run
    deferred: int = 0  # subjects left for a later run: the budget was spent
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------- the schema


async def postgres_tables(pg: asyncpg.Connection) -> dict[str, frozenset[str]]:
    rows = await pg.fetch(
        "SELECT c.table_name AS t, array_agg(c.column_name::text) AS cols"
        " FROM information_schema.columns c JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " GROUP BY c.table_name"
    )
    return {r["t"]: frozenset(r["cols"]) for r in rows}


async def clickhouse_tables(ch: AsyncClient) -> dict[str, frozenset[str]]:
    """Tables of the current database with their columns; ``engine`` as a pseudo-column
    ``:engine=<name>`` so :func:`audit` can refuse a table DELETE cannot reach. Views are left
    out: they hold no rows (a materialized view writes TO a table, which is listed)."""
    result = await ch.query(
        "SELECT c.table, groupArray(c.name), any(t.engine) FROM system.columns AS c"
        " INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table"
        " WHERE c.database = currentDatabase() AND t.engine NOT IN ('View', 'MaterializedView')"
        " GROUP BY c.table"
    )
    return {
        str(t): frozenset({*(str(c) for c in cols), f":engine={engine}"})
        for t, cols, engine in result.result_rows
    }


def _deletable(columns: frozenset[str]) -> bool:
    engines = [c for c in columns if c.startswith(":engine=")]
    return not engines or any(e.endswith("MergeTree") for e in engines)


def plan_for(store: str, tables: Tables) -> StorePlan:
    kept = KEPT[store]
    source = MESSAGE_SOURCE[store]
    guild: list[str] = []
    user: list[tuple[str, str]] = []
    message: list[str] = []
    for table in sorted(tables):
        columns = tables[table]
        if table in kept or GUILD_COLUMN not in columns or not _deletable(columns):
            continue
        guild.append(table)
        members = sorted(USER_COLUMNS & columns)
        user.extend((table, column) for column in members)
        if not members and MESSAGE_COLUMN in columns and table != source:
            message.append(table)
    return StorePlan(tuple(guild), tuple(user), tuple(message))


def audit(store: str, tables: Tables) -> list[str]:
    """Why deletion would miss something in this store's schema ([] when it would not)."""
    problems = []
    kept = KEPT[store]
    for table in sorted(tables):
        columns = tables[table]
        ids = {c for c in columns if _ID_COLUMN.search(c)}
        if table in kept or not ids:
            continue
        unknown = ids - {GUILD_COLUMN} - USER_COLUMNS - OTHER_IDS
        if unknown:
            problems.append(
                f"{store}.{table}: id column(s) {sorted(unknown)} are neither a server, a member"
                " nor a known other id: classify them in etl/privacy.py"
            )
        personal = ids & (USER_COLUMNS | {MESSAGE_COLUMN})
        if GUILD_COLUMN not in columns and personal:
            problems.append(f"{store}.{table}: holds {sorted(personal)} without guild_id")
        if GUILD_COLUMN in columns and not _deletable(columns):
            problems.append(f"{store}.{table}: its engine does not support DELETE")
    return problems


async def plan(pg: asyncpg.Connection, ch: AsyncClient) -> Plan:
    return Plan(
        plan_for("postgres", await postgres_tables(pg)),
        plan_for("clickhouse", await clickhouse_tables(ch)),
    )


# ------------------------------------------------------------------------- scheduling


async def due(pg: asyncpg.Connection) -> list[DeletionRequest]:
    rows = await pg.fetch(
        "SELECT request_id, scope, guild_id, user_id FROM deletion_requests"
        " WHERE completed_at IS NULL AND (retry_at IS NULL OR retry_at <= now())"
        " ORDER BY requested_at, request_id"
    )
    return [DeletionRequest(r["request_id"], r["scope"], r["guild_id"], r["user_id"]) for r in rows]


async def pending_count(pg: asyncpg.Connection) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM deletion_requests WHERE completed_at IS NULL"
    )
    return count


def subjects(requests: list[DeletionRequest]) -> dict[Subject, list[int]]:
    """Request ids per subject, oldest subject first; a server's request absorbs its members'."""
    whole = {r.guild_id for r in requests if r.scope == "guild"}
    out: dict[Subject, list[int]] = {}
    for r in requests:
        user = None if r.scope == "guild" or r.guild_id in whole else r.user_id
        out.setdefault(Subject(r.guild_id, user), []).append(r.request_id)
    return out


async def carry_out_due(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    redis: Redis | None,
    redis_prefix: str,
    budget_seconds: float,
) -> DeletionOutcome:
    """Carry out due requests until the budget is spent (always at least one subject, so
    requests make progress however short the runs). Never raises for a failed subject."""
    outcome = DeletionOutcome()
    todo = subjects(await due(pg))
    if not todo:
        return outcome
    until = time.monotonic() + budget_seconds
    where = await plan(pg, ch)
    for position, (subject, ids) in enumerate(todo.items()):
        if position and time.monotonic() >= until:
            outcome.deferred = len(todo) - position
            break
        try:
            await carry_out(pg, ch, redis, redis_prefix, where, subject)
        except (asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError):
            raise  # Postgres itself is gone: nothing can be recorded or loaded this run
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("deletion of %s failed; retried later: %s", subject, error)
            outcome.failed += 1
            outcome.errors.append(error)
            await pg.execute(
                "UPDATE deletion_requests SET attempts = attempts + 1, last_error = $2,"
                " retry_at = now() + make_interval(secs => least($3::float8 * 2 ^ attempts, $4))"
                " WHERE request_id = ANY($1::bigint[])",
                ids,
                error,
                float(RETRY_FIRST_SECONDS),
                float(RETRY_MAX_SECONDS),
            )
            continue
        await pg.execute(
            "UPDATE deletion_requests SET completed_at = now(), last_error = NULL, retry_at = NULL"
            " WHERE request_id = ANY($1::bigint[])",
            ids,
        )
        outcome.subjects += 1
        outcome.completed += len(ids)
    return outcome


# ------------------------------------------------------------------------- carrying out


async def carry_out(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    redis: Redis | None,
    redis_prefix: str,
    where: Plan,
    subject: Subject,
) -> None:
    if subject.user_id is None:
        await _delete_guild(pg, ch, where, subject.guild_id)
    else:
        await _delete_user(pg, ch, where, subject.guild_id, subject.user_id)
    if redis is not None:
        await _delete_redis(redis, redis_prefix, subject)


async def _delete_guild(pg: asyncpg.Connection, ch: AsyncClient, where: Plan, guild: int) -> None:
    async with pg.transaction():
        for table in where.postgres.guild_tables:
            await pg.execute(f'DELETE FROM "{table}" WHERE guild_id = $1', guild)
    for table in where.clickhouse.guild_tables:
        await ch_delete(ch, table, "guild_id = {g:UInt64}", {"g": guild})


async def _delete_user(
    pg: asyncpg.Connection, ch: AsyncClient, where: Plan, guild: int, user: int
) -> None:
    source = MESSAGE_SOURCE["postgres"]
    async with pg.transaction():
        # Rows without an author (edits, deletions) go with the member's messages: first.
        for table in where.postgres.message_tables:
            await pg.execute(
                f'DELETE FROM "{table}" WHERE guild_id = $1 AND message_id IN'
                f" (SELECT message_id FROM {source} WHERE guild_id = $1 AND author_id = $2)",
                guild,
                user,
            )
        for table, column in where.postgres.user_tables:
            await pg.execute(
                f'DELETE FROM "{table}" WHERE guild_id = $1 AND "{column}" = $2', guild, user
            )
    params = {"g": guild, "u": user}
    source = MESSAGE_SOURCE["clickhouse"]
    for table in where.clickhouse.message_tables:
        await ch_delete(
            ch,
            table,
            f"guild_id = {{g:UInt64}} AND message_id IN (SELECT message_id FROM {source}"
            " WHERE guild_id = {g:UInt64} AND author_id = {u:UInt64})",
            params,
        )
    result = await ch.query(
        "SELECT DISTINCT guild_id, toUnixTimestamp(hour) FROM message_activity_hourly FINAL"
        " WHERE guild_id = {g:UInt64} AND author_id = {u:UInt64} AND messages > 0",
        parameters=params,
    )
    await ch_delete(ch, source, "guild_id = {g:UInt64} AND author_id = {u:UInt64}", params)
    # The other members' figures in those hours and days, without the deleted messages; the
    # member's own rows become zero rows here and go with the rest just below.
    await rollups.recompute(ch, [(int(g), int(h)) for g, h in result.result_rows])
    for table, column in where.clickhouse.user_tables:
        if table != source:
            await ch_delete(
                ch, table, f"guild_id = {{g:UInt64}} AND `{column}` = {{u:UInt64}}", params
            )


async def _delete_redis(redis: Redis, prefix: str, subject: Subject) -> None:
    # Cached replies of any command may show the member (leaderboards) or the server.
    guild = subject.guild_id
    replies = [k async for k in redis.scan_iter(match=_REPLIES.format(prefix=prefix, guild=guild))]
    if replies:
        await redis.delete(*replies)
    if subject.user_id is None:
        await redis.delete(_VOICE_KEY.format(prefix=prefix, guild=guild))
        await redis.srem(_VOICE_GUILDS.format(prefix=prefix), str(guild))


async def ch_delete(ch: AsyncClient, table: str, where: str, params: dict[str, Any]) -> None:
    # Lightweight DELETE masks the rows at once (FINAL reads honour the mask); the default
    # lightweight_deletes_sync waits for it, so the request is not marked done too early.
    await ch.command(f"DELETE FROM `{table}` WHERE {where}", parameters=params)
