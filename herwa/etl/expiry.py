"""History that ends: each server keeps its tier's ``history_days`` and nothing older.

A ClickHouse TTL cannot know a server's tier, so the ETL deletes, after loading, every row of a
server older than its window, in every ClickHouse table holding server data: the same tables
deletion requests reach (:func:`herwa.etl.privacy.plan_for`, found from the schema), raw tables
and rollups alike, so a table a later migration adds is covered without touching this module.
Each table's time is the date or time column of its partition key (every table is partitioned by
its event's own time, see clickhouse migration 0001), else of its sorting key;
:func:`~herwa.etl.expiry_plan.audit` (run by the tests against the migrated schema) fails for a
table with neither.

A server's window (:mod:`herwa.etl.history_windows`) is its entitlement's ``history_days`` quota
(its GuildSubscription's tier, with overrides), else the default tier's; no quota means no
limit. An expired or suspended subscription keeps its window: a lapsed payment must not destroy
what a renewal gives back. Windows come from Postgres and are validated: a guild id outside
bigint's positive range or a ``history_days`` that is not a whole number of days in [1,
:data:`~herwa.etl.history_windows.MAX_HISTORY_DAYS`] is refused, logged and counted, and that
server's data (or, for the default tier, every server's without a subscription) is kept rather
than guessed at.

The cutoff is UTC midnight ``history_days`` days before today: a command's range reaches back at
most ``history_days`` days from now in any time zone, so nothing a query may still ask for is
deleted, and every table is cut at the same UTC day boundary, so a rollup never outlives or
undercuts the raw rows it sums.

How: a partition whose newest row is older than every server's cutoff is dropped whole (cheap,
and it frees the disk at once); otherwise the servers with rows before their cutoff are found
per table and their rows go by lightweight DELETE (masked at once, FINAL reads honour it,
removed from disk by later merges), a bounded number of servers per statement. A pass is due
once per UTC day and whenever a window changes (a downgrade takes effect on the next ETL run);
it runs within a time budget and is recorded in ``history_expiry`` only when complete, so a pass
cut short is carried on by the next run. Every step is idempotent: a re-run finds nothing due.

Postgres: staging rows are deleted by ``cleanup`` once loaded, and the other tables with a
server id hold current state or records (:data:`~herwa.etl.expiry_plan.POSTGRES_BOUNDED`,
:data:`privacy.KEPT`); the one long-lived copy of activity there, ``dead_letter_rows``, expires
with the same windows.
"""

# ruff: noqa: S608 - identifiers in SQL come from the stores' own catalogues; values are bound.

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from herwa.etl import privacy
from herwa.etl.expiry_plan import (
    CLICKHOUSE_DATE_ARRAYS,
    POSTGRES_EXPIRED,
    Target,
    TimeSets,
    clickhouse_catalogue,
    plan_for,
    time_sets,
)
from herwa.etl.history_windows import Windows, cutoff, windows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

# Servers per DELETE. Each DELETE is a mutation over every part holding matching rows, whose
# cost hardly depends on how many servers it names, so they are large; their ids and cutoffs
# travel as query parameters in the URL (about 30 bytes a server, far below ClickHouse's
# 1 MiB limit).
GUILD_CHUNK = 5000
_PARTITION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass
class ExpiryOutcome:
    due: bool = False
    complete: bool = False
    rows: dict[str, int] = field(default_factory=dict)  # "store.table" -> rows deleted
    guilds: set[int] = field(default_factory=set)  # servers that lost rows
    partitions: dict[str, int] = field(default_factory=dict)  # table -> partitions dropped
    failed: list[str] = field(default_factory=list)


class ExpiryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rows = Counter(
            "herwa_etl_history_rows_expired",
            "Rows deleted because they were older than their server's history window",
            ["table"],
            registry=r,
        )
        self.guilds = Counter(
            "herwa_etl_history_guilds_expired",
            "Servers whose rows history expiry deleted (partitions dropped whole not"
            " counted), once per run",
            registry=r,
        )
        self.partitions = Counter(
            "herwa_etl_history_partitions_dropped",
            "ClickHouse partitions dropped whole: older than every server's window",
            ["table"],
            registry=r,
        )
        self.failures = Counter(
            "herwa_etl_history_expiry_failures",
            "Tables whose expiry failed this run (retried by the next run)",
            registry=r,
        )
        self.refused = Gauge(
            "herwa_etl_history_windows_refused",
            "Entitlements or default tier whose history_days was refused (history kept)",
            registry=r,
        )
        self.unexpirable = Gauge(
            "herwa_etl_history_tables_unexpirable",
            "Tables holding server data whose rows' age expiry cannot tell (kept; see the log)",
            registry=r,
        )
        self.last_complete = Gauge(
            "herwa_etl_history_expiry_last_complete_timestamp_seconds",
            "End of the last complete history expiry pass (0: none yet)",
            registry=r,
        )

    def record(self, outcome: ExpiryOutcome) -> None:
        for table, rows in outcome.rows.items():
            self.rows.labels(table).inc(rows)
        self.guilds.inc(len(outcome.guilds))
        for table, count in outcome.partitions.items():
            self.partitions.labels(table).inc(count)
        self.failures.inc(len(outcome.failed))


async def expire_due(
    pg: asyncpg.Connection,
    ch: AsyncClient,
    budget_seconds: float,
    registry: CollectorRegistry | None = None,
    *,
    now: datetime | None = None,
) -> ExpiryOutcome:
    """Run a pass if one is due, within the budget (at least one table, so a pass always
    progresses). Never raises for a failed table: it is retried by the next run."""
    until = time.monotonic() + budget_seconds
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    metrics = ExpiryMetrics(registry or CollectorRegistry())
    current = await windows(pg)
    metrics.refused.set(len(current.refused))
    for reason in current.refused:
        log.warning("history expiry: %s", reason)
    fingerprint = current.fingerprint(today)
    outcome = ExpiryOutcome()
    last = await pg.fetchrow("SELECT fingerprint, completed_at FROM history_expiry")
    if last is not None:
        metrics.last_complete.set(last["completed_at"].timestamp())
        if last["fingerprint"] == fingerprint:
            return outcome
    outcome.due = True
    catalogue = await clickhouse_catalogue(ch)
    tables = await privacy.clickhouse_tables(ch)
    targets, problems = plan_for(tables, catalogue)
    # Reported, not retried run after run: only a schema change can fix it
    # (expiry_plan.audit() fails the tests for it first).
    metrics.unexpirable.set(len(problems))
    for problem in problems:
        log.warning("history expiry: %s", problem)
    # Each ClickHouse table's expiry: True when it is done, False when the budget ran out.
    jobs: list[tuple[str, Callable[[], Awaitable[bool]]]] = [
        (t.table, functools.partial(_expire_table, ch, t, current, today, until, outcome))
        for t in targets
    ]
    jobs += [
        (
            table,
            functools.partial(
                _expire_arrays,
                ch,
                table,
                [c[0] for c in catalogue[table]],
                arrays,
                current,
                today,
                outcome,
            ),
        )
        for table, arrays in CLICKHOUSE_DATE_ARRAYS.items()
        if table in catalogue
    ]
    jobs += [
        (sets.table, functools.partial(_expire_time_sets, ch, sets, current, today, outcome))
        for sets in time_sets(tables, catalogue)
    ]
    complete = True
    for table, expire in jobs:
        # Once the budget is spent, a table that deletes nothing (most, most days) is still
        # looked at, but none after one that deleted: every run gets at least one table's
        # rows deleted, and a pass cut short continues with the next table that has any.
        if time.monotonic() >= until and (outcome.rows or outcome.partitions):
            complete = False
            break
        try:
            complete &= await expire()
        except (asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError):
            raise
        except Exception as exc:
            error = f"clickhouse.{table}: {type(exc).__name__}: {exc}"[:1000]
            log.warning("history expiry failed; retried by the next run: %s", error)
            outcome.failed.append(error)
            complete = False
    for table, column in POSTGRES_EXPIRED.items():
        await _expire_postgres(pg, table, column, current, today, outcome)
    outcome.complete = complete
    if outcome.complete:
        await pg.execute(
            "INSERT INTO history_expiry (fingerprint, completed_at, guilds, rows_expired)"
            " VALUES ($1, now(), $2, $3::jsonb) ON CONFLICT (singleton) DO UPDATE SET"
            " fingerprint = EXCLUDED.fingerprint, completed_at = EXCLUDED.completed_at,"
            " guilds = EXCLUDED.guilds, rows_expired = EXCLUDED.rows_expired",
            fingerprint,
            len(outcome.guilds),
            json.dumps(outcome.rows, sort_keys=True),
        )
        metrics.last_complete.set(time.time())
    metrics.record(outcome)
    log.info(
        "history expiry pass %s",
        "complete" if outcome.complete else "cut short (carried on by the next run)",
        extra={
            "rows": outcome.rows,
            "guilds": len(outcome.guilds),
            "partitions": outcome.partitions,
            "failed": len(outcome.failed),
        },
    )
    return outcome


async def _expire_table(
    ch: AsyncClient,
    target: Target,
    current: Windows,
    today: date,
    until: float,
    outcome: ExpiryOutcome,
) -> bool:
    """Expire one table; False if the budget ran out before it was done."""
    cutoffs, default = current.cutoffs(today)
    every = [*cutoffs.values(), default]
    known = [c for c in every if c is not None]
    if not known:
        return True  # every server keeps everything
    name = f"clickhouse.{target.table}"
    if target.partitioned and None not in every:
        await _drop_partitions(ch, target, min(known), outcome)
    # The servers with rows before their own cutoff; only rows older than the newest cutoff
    # can be, which lets ClickHouse skip the newer partitions.
    result = await ch.query(
        f"SELECT guild_id, {target.first_day} FROM `{target.table}`"
        f" WHERE {target.before('{newest:Date}')} GROUP BY guild_id",
        parameters={"newest": max(known)},
    )
    due: list[tuple[int, date]] = []
    for guild, first in result.result_rows:
        guild_cutoff = cutoffs.get(guild, default)
        if guild_cutoff is not None and first < guild_cutoff:
            due.append((int(guild), guild_cutoff))
    for at in range(0, len(due), GUILD_CHUNK):
        if at and time.monotonic() >= until:
            return False
        chunk = due[at : at + GUILD_CHUNK]
        params = {"ids": [g for g, _ in chunk], "cuts": [c for _, c in chunk]}
        where = "guild_id IN {ids:Array(UInt64)} AND " + target.before(
            "transform(guild_id, {ids:Array(UInt64)}, {cuts:Array(Date)}, toDate(0))"
        )
        rows = (
            await ch.query(f"SELECT count() FROM `{target.table}` WHERE {where}", parameters=params)
        ).result_rows[0][0]
        await privacy.ch_delete(ch, target.table, where, params)
        outcome.rows[name] = outcome.rows.get(name, 0) + int(rows)
        outcome.guilds.update(g for g, _ in chunk)
    return True


async def _expire_arrays(
    ch: AsyncClient,
    table: str,
    columns: list[str],
    arrays: tuple[str, ...],
    current: Windows,
    today: date,
    outcome: ExpiryOutcome,
) -> bool:
    """Write again, under version + 1, each row holding dates before its server's cutoff,
    without those elements (a row left with none stays, empty: deleting it would let FINAL
    bring back the older version). Always done in one go: True."""
    cutoffs, default = current.cutoffs(today)
    known = [c for c in (*cutoffs.values(), default) if c is not None]
    if not known:
        return True
    dates = arrays[0]
    result = await ch.query(
        f"SELECT DISTINCT guild_id FROM `{table}` FINAL"
        f" WHERE notEmpty(`{dates}`) AND `{dates}`[1] < {{newest:Date}}",
        parameters={"newest": max(known)},
    )
    due = [(int(g), c) for (g,) in result.result_rows if (c := cutoffs.get(g, default)) is not None]
    cut = "transform(guild_id, {ids:Array(UInt64)}, {cuts:Array(Date)}, toDate(0))"
    keep = f"arrayMap(d -> d >= {cut}, `{dates}`)"
    select = ", ".join(
        f"arrayFilter((x, k) -> k, `{c}`, {keep})"
        if c in arrays
        else ("version + 1" if c == "version" else f"`{c}`")
        for c in columns
    )
    listed = ", ".join(f"`{c}`" for c in columns)
    where = f"guild_id IN {{ids:Array(UInt64)}} AND notEmpty(`{dates}`) AND `{dates}`[1] < {cut}"

    async def rewrite(params: dict[str, Any]) -> None:
        await ch.command(
            f"INSERT INTO `{table}` ({listed}) SELECT {select} FROM `{table}` FINAL WHERE {where}",
            parameters=params,
        )

    await _rewrite_due(ch, table, due, f"`{table}` FINAL WHERE {where}", rewrite, outcome)
    return True


async def _expire_time_sets(
    ch: AsyncClient, sets: TimeSets, current: Windows, today: date, outcome: ExpiryOutcome
) -> bool:
    """Rewrite in place (a mutation, waited for) each row holding times before its server's
    cutoff without them, then delete the rows left with none. An insert cannot do it: the
    table merges rows by set union, which keeps every time either row had. Always done in one
    go: True."""
    cutoffs, default = current.cutoffs(today)
    known = [c for c in (*cutoffs.values(), default) if c is not None]
    if not known:
        return True
    table = sets.table
    result = await ch.query(
        f"SELECT DISTINCT guild_id FROM `{table}` WHERE {sets.any_before('{newest:Date}')}",
        parameters={"newest": max(known)},
    )
    due = [(int(g), c) for (g,) in result.result_rows if (c := cutoffs.get(g, default)) is not None]
    cut = "transform(guild_id, {ids:Array(UInt64)}, {cuts:Array(Date)}, toDate(0))"
    where = f"guild_id IN {{ids:Array(UInt64)}} AND ({sets.any_before(cut)})"
    kept = ", ".join(f"`{c}` = {sets.kept(c, cut)}" for c in sets.columns)
    emptied = " AND ".join(f"empty(`{c}`)" for c in sets.columns)

    async def rewrite(params: dict[str, Any]) -> None:
        await ch.command(
            f"ALTER TABLE `{table}` UPDATE {kept} WHERE {where}",
            parameters=params,
            settings={"mutations_sync": 2},
        )
        await privacy.ch_delete(
            ch, table, f"guild_id IN {{ids:Array(UInt64)}} AND {emptied}", params
        )

    await _rewrite_due(ch, table, due, f"`{table}` WHERE {where}", rewrite, outcome)
    return True


async def _rewrite_due(
    ch: AsyncClient,
    table: str,
    due: list[tuple[int, date]],
    rows_from: str,
    rewrite: Callable[[dict[str, Any]], Awaitable[None]],
    outcome: ExpiryOutcome,
) -> None:
    """``rewrite`` per chunk of due servers (guild, cutoff) whose rows (``SELECT count() FROM
    rows_from``) hold an element before their own cutoff, counted in ``outcome``."""
    for at in range(0, len(due), GUILD_CHUNK):
        chunk = due[at : at + GUILD_CHUNK]
        params: dict[str, Any] = {"ids": [g for g, _ in chunk], "cuts": [c for _, c in chunk]}
        rows = (await ch.query(f"SELECT count() FROM {rows_from}", parameters=params)).result_rows[
            0
        ][0]
        if not rows:  # their elements are all within their own windows
            continue
        await rewrite(params)
        name = f"clickhouse.{table}"
        outcome.rows[name] = outcome.rows.get(name, 0) + int(rows)
        outcome.guilds.update(g for g, _ in chunk)


async def _drop_partitions(
    ch: AsyncClient, target: Target, earliest: date, outcome: ExpiryOutcome
) -> None:
    """Drop the partitions whose newest row every server's window has passed."""
    result = await ch.query(
        f"SELECT _partition_id, count() FROM `{target.table}` GROUP BY _partition_id"
        f" HAVING {target.newest_before('{earliest:Date}')}",
        parameters={"earliest": earliest},
    )
    name = f"clickhouse.{target.table}"
    for partition, rows in result.result_rows:
        if not _PARTITION_ID.match(str(partition)):  # ids are digits and letters; never quote
            continue
        await ch.command(f"ALTER TABLE `{target.table}` DROP PARTITION ID '{partition}'")
        outcome.rows[name] = outcome.rows.get(name, 0) + int(rows)
        outcome.partitions[target.table] = outcome.partitions.get(target.table, 0) + 1


async def _expire_postgres(
    pg: asyncpg.Connection,
    table: str,
    column: str,
    current: Windows,
    today: date,
    outcome: ExpiryOutcome,
) -> None:
    def midnight(day: date | None) -> datetime | None:
        return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)

    guilds = list(current.guilds)
    # A server with an entitlement row is cut at its own cutoff (NULL: kept), any other row
    # (a server without one, or no valid server id at all) at the default tier's.
    rows = await pg.fetch(
        f'DELETE FROM "{table}" AS t WHERE t."{column}" < CASE'
        " WHEN t.guild_id = ANY($1::bigint[]) THEN (SELECT w.c FROM"
        " unnest($1::bigint[], $2::timestamptz[]) AS w(g, c) WHERE w.g = t.guild_id)"
        " ELSE $3::timestamptz END RETURNING t.guild_id",
        guilds,
        [midnight(cutoff(current.guilds[g], today)) for g in guilds],
        midnight(cutoff(current.default, today)),
    )
    if rows:
        name = f"postgres.{table}"
        outcome.rows[name] = outcome.rows.get(name, 0) + len(rows)
        outcome.guilds.update(int(r["guild_id"]) for r in rows if r["guild_id"] is not None)
