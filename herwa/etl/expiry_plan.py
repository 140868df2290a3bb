"""Which tables history expiry reaches, and by which time column: found from the schema, so
a table a later migration adds is covered without touching :mod:`herwa.etl.expiry`.

ClickHouse: every table holding server data (the tables deletion requests reach,
:func:`herwa.etl.privacy.plan_for`), each by the date or time column of its partition key, else
of its sorting key. Postgres: staging is bounded by ``cleanup``, the rest is named here.
:func:`audit` (run by the tests against the migrated schema) fails for a table this cannot place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from herwa.etl import privacy

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

# Postgres tables with a server id whose rows expire with the server's window: their time column.
POSTGRES_EXPIRED: Mapping[str, str] = {"dead_letter_rows": "captured_at"}
# Postgres tables with a server id that are neither staging (bounded by cleanup, found by
# STAGING_COLUMN), kept by deletion (privacy.KEPT) nor expired: why they stay bounded.
POSTGRES_BOUNDED: Mapping[str, str] = {
    "etl_dirty_buckets": "a queue the next rollup recompute empties",
    "bot_voice_open": "one row per member in voice now",
    "bot_member_counts": "one row per server: its current member count",
    "bot_backfill_pending": "one row per backfill under way",
    "bot_handover_anchors": "one row per server and shard count the bot fleet ran with: "
    "where the next fleet takes over its recording",
}
STAGING_COLUMN = "ch_ingested_at"
# ClickHouse tables whose rows hold their ages as an ascending Array(Date) (one row per member,
# not per day), with the arrays parallel to it: expired by writing each row again without its
# elements before the cutoff, under a newer version. The date array, then the parallel ones.
CLICKHOUSE_DATE_ARRAYS: Mapping[str, tuple[str, ...]] = {
    "message_activity_weeks_by_author": ("weeks", "first_at", "last_at"),
    "message_local_weeks": ("weeks",),
    "voice_local_weeks": ("weeks",),
}
# ClickHouse tables with a server id but no event time, and why they stay bounded (deletion
# requests reach them through guild_id all the same).
CLICKHOUSE_BOUNDED: Mapping[str, str] = {
    "message_local_weeks_zone": "one row per server: the time zone its local weeks are in",
}
_TIME_TYPE = re.compile(r"^(Date|Date32|DateTime|DateTime64)(\(.*\))?$")
# A column holding a set of times per row, merged by set union (AggregatingMergeTree). An insert
# cannot shrink a union, so such a table is expired by rewriting the rows in place without the
# times before the cutoff (_expire_time_sets); a table with one is found by its type.
_TIME_SET_TYPE = re.compile(
    r"^SimpleAggregateFunction\(groupUniqArrayArray, Array\(((?:Date|DateTime)\w*(?:\(.*\))?)\)\)$"
)


@dataclass(frozen=True)
class Target:
    table: str
    column: str  # the table's event time
    midnight: str  # SQL turning a Date into UTC midnight of the column's own type
    partitioned: bool  # the column is the partition key's: old partitions can be dropped

    def before(self, day_expr: str, column_expr: str | None = None) -> str:
        """SQL: the time (default: the row's) lies before UTC midnight of ``day_expr``.

        The bound has the column's own type: ClickHouse 26.9's minmax index skips a granule
        whose DateTime64 times lie in the last second before a DateTime bound (rows of
        23:59:59.5 were not found by ``< toDateTime(day, 'UTC')``).
        """
        return f"{column_expr or f'`{self.column}`'} < {self.midnight.format(day_expr)}"

    def newest_before(self, day_expr: str) -> str:
        """SQL, aggregated: every row of the group lies before ``day_expr``."""
        return self.before(day_expr, f"max(`{self.column}`)")

    @property
    def first_day(self) -> str:
        """SQL, aggregated: the UTC day of the group's oldest row."""
        if self.midnight == "{}":
            return f"min(`{self.column}`)"
        return f"toDate(min(`{self.column}`), 'UTC')"


@dataclass(frozen=True)
class TimeSets:
    table: str
    columns: tuple[str, ...]  # each a set of times (_TIME_SET_TYPE)
    midnight: str  # as Target.midnight, for the sets' element type

    def kept(self, column: str, day_expr: str) -> str:
        """SQL: ``column`` without its times before UTC midnight of ``day_expr``."""
        return f"arrayFilter(t -> t >= {self.midnight.format(day_expr)}, `{column}`)"

    def any_before(self, day_expr: str) -> str:
        """SQL: the row holds a time before UTC midnight of ``day_expr``."""
        bound = self.midnight.format(day_expr)
        return " OR ".join(f"arrayExists(t -> t < {bound}, `{c}`)" for c in self.columns)


def _midnight(kind: str) -> str:
    precision = re.match(r"^DateTime64\((\d)", kind)
    if precision:
        return f"toDateTime64({{}}, {precision.group(1)}, 'UTC')"
    return "toDateTime({}, 'UTC')" if kind.startswith("DateTime") else "{}"


Column = tuple[str, str, bool, bool]  # name, type, in the partition key, in the sorting key
Catalogue = Mapping[str, tuple[Column, ...]]


async def clickhouse_catalogue(ch: AsyncClient) -> dict[str, tuple[Column, ...]]:
    result = await ch.query(
        "SELECT table, name, type, is_in_partition_key, is_in_sorting_key FROM system.columns"
        " WHERE database = currentDatabase() ORDER BY table, position"
    )
    out: dict[str, list[Column]] = {}
    for table, name, kind, partition, sorting in result.result_rows:
        out.setdefault(str(table), []).append(
            (str(name), str(kind), bool(partition), bool(sorting))
        )
    return {t: tuple(c) for t, c in out.items()}


def target_for(table: str, columns: tuple[Column, ...]) -> Target | None:
    """The table's event time: the partition key's date or time column, else the sorting
    key's; None when there is none, or two (which one decides is not for this module to guess)."""
    for in_partition in (True, False):
        times = [
            (name, kind)
            for name, kind, partition, sorting in columns
            if (partition if in_partition else sorting) and _TIME_TYPE.match(kind)
        ]
        if len(times) == 1:
            name, kind = times[0]
            return Target(table, name, _midnight(kind), in_partition)
        if times:
            return None
    return None


def time_sets_for(table: str, columns: tuple[Column, ...]) -> TimeSets | None:
    """The table's sets of times, when it has any (all of one element type); else None."""
    found = [
        (name, match.group(1))
        for name, kind, _, _ in columns
        if (match := _TIME_SET_TYPE.match(kind))
    ]
    if not found or len({kind for _, kind in found}) > 1:
        return None
    return TimeSets(table, tuple(name for name, _ in found), _midnight(found[0][1]))


def time_sets(tables: privacy.Tables, catalogue: Catalogue) -> list[TimeSets]:
    """The ClickHouse tables holding server data as sets of times, expired by rewriting."""
    found = (
        time_sets_for(table, catalogue.get(table, ()))
        for table in privacy.plan_for("clickhouse", tables).guild_tables
    )
    return [sets for sets in found if sets is not None]


def plan_for(tables: privacy.Tables, catalogue: Catalogue) -> tuple[list[Target], list[str]]:
    """The ClickHouse tables to expire row by row, and why any table holding server data
    cannot be (those expired element by element, date arrays and time sets, are not listed)."""
    targets, problems = [], []
    for table in privacy.plan_for("clickhouse", tables).guild_tables:
        if table in CLICKHOUSE_DATE_ARRAYS:
            continue  # expired element by element (_expire_arrays)
        if table in CLICKHOUSE_BOUNDED:
            continue
        if time_sets_for(table, catalogue.get(table, ())) is not None:
            continue  # rewritten without the old times (_expire_time_sets)
        target = target_for(table, catalogue.get(table, ()))
        if target is None:
            problems.append(
                f"clickhouse.{table}: holds guild_id but has no single date or time column in"
                " its partition key (or, failing that, its sorting key): history expiry cannot"
                " tell its rows' age; partition it by its event time"
            )
        else:
            targets.append(target)
    return targets, problems


def audit_postgres(tables: privacy.Tables) -> list[str]:
    problems = []
    for table in privacy.plan_for("postgres", tables).guild_tables:
        columns = tables[table]
        if STAGING_COLUMN in columns or table in POSTGRES_BOUNDED:
            continue
        if table not in POSTGRES_EXPIRED:
            problems.append(
                f"postgres.{table}: holds guild_id but is neither staging, bounded nor expired:"
                " classify it in etl/expiry_plan.py"
            )
        elif POSTGRES_EXPIRED[table] not in columns:
            problems.append(f"postgres.{table}: has no column {POSTGRES_EXPIRED[table]!r}")
    return problems


async def audit(pg: asyncpg.Connection, ch: AsyncClient) -> list[str]:
    """Why expiry would miss a table holding server data ([] when it would not)."""
    _, problems = plan_for(await privacy.clickhouse_tables(ch), await clickhouse_catalogue(ch))
    return problems + audit_postgres(await privacy.postgres_tables(pg))
