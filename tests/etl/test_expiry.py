"""History that ends: each server keeps its tier's ``history_days``, in every table.

Through real Postgres, Redis and ClickHouse: subscriptions are applied, downgraded and removed
by the operator's own reconcile code, rows are staged as the bot stages them and loaded by ETL
runs, and what is left is checked in every table the expiry plan derives from the schema (raw
tables and rollups), so a table a later migration adds is checked here too.
"""

# ruff: noqa: S608 - table and column names come from the stores' own catalogues.

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from clickhouse_connect.driver.asyncclient import AsyncClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from herwa import platform
from herwa.devstack import Endpoints
from herwa.etl import expiry, expiry_plan, history_windows, privacy
from herwa.etl.runner import RunOptions, run_once
from herwa.operator import etl_health
from herwa.operator.reconcile import OperatorRuntime, Subscription, reconcile, revoke
from herwa.stores import clickhouse_url_client
from tests.etl._support import ch_rows, ch_value

OPTIONS = RunOptions(batch_rows=1000, redis_prefix="t:")
# No subscription (default: free), pro, enterprise; distinct last digits key their message ids.
FREE_G, PRO_G, ENT_G = 81384788765712011, 81384788765712022, 81384788765712033
AGES = (10, 100, 400, 2000)  # days before now of each guild's staged rows
# Tables every staged family reaches; the plan may hold more (a later migration's).
FED = {
    "messages",
    "message_edits",
    "message_deletions",
    "voice_sessions",
    "member_events",
    "guild_events",
    "member_count_snapshots",
    "command_usage",
    "message_reactions",
    "presence_events",
    "message_activity_hourly",
    "message_activity_15m",
    "message_activity_author_days",
    "member_joins",
    "voice_starts_by_member",
}
# Those of them holding one row per member with an ascending array of dates, expired element by
# element: retention's per-author week arrays, UTC and local.
FED_ARRAYS = {"message_activity_weeks_by_author", "message_local_weeks", "voice_local_weeks"}


@pytest.fixture
async def runtime(migrated: Endpoints) -> AsyncIterator[OperatorRuntime]:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=0, max_size=2)
    redis = Redis.from_url(migrated.redis_url)
    try:
        yield OperatorRuntime(pool=pool, redis=redis, prefix="t:", platform=platform.load())
    finally:
        await redis.aclose()
        await pool.close()


async def _subscribe(rt: OperatorRuntime, guild: int, tier: str, uid: str, generation: int) -> None:
    sub = Subscription(
        "tenant", f"g{guild}", uid, generation, {"guildId": str(guild), "tier": tier}
    )
    outcome = await reconcile(rt, sub, [], trigger="create")
    assert outcome.state == "active", outcome.message


async def _stage(pg: asyncpg.Connection, guild: int, at: datetime, key: int) -> None:
    """Every family once at ``at``: two messages (one edited, one deleted) and the rest."""
    m = guild % 1000 * 1000 + key * 10
    await pg.executemany(
        "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
        " kind, is_bot) VALUES ($1, $2, 7, $3, $4, 'text', false)",
        [(m, guild, 100, at), (m + 1, guild, 101, at + timedelta(seconds=1))],
    )
    later = at + timedelta(minutes=1)
    await pg.execute(
        "INSERT INTO message_edits (message_id, edited_at, guild_id, channel_id)"
        " VALUES ($1, $2, $3, 7)",
        m,
        later,
        guild,
    )
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES ($1, $2, 7, $3)",
        m + 1,
        guild,
        later,
    )
    await pg.execute(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES ($1, $2, 50, 100, $3, $4, 'leave')",
        uuid.uuid4(),
        guild,
        at,
        later,
    )
    await pg.execute(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " VALUES ($1, 100, 'join', $2, $3)",
        guild,
        at,
        at - timedelta(days=30),
    )
    await pg.execute(
        "INSERT INTO guild_events (guild_id, event, at, member_count) VALUES ($1, 'join', $2, 7)",
        guild,
        at,
    )
    await pg.execute(
        "INSERT INTO member_count_snapshots (guild_id, day, member_count) VALUES ($1, $2, 7)",
        guild,
        at.date(),
    )
    await pg.execute(
        "INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations)"
        " VALUES ($1, $2, 'overview', date_trunc('hour', $3::timestamptz), 'ok', 3)",
        f"d{key}",
        guild,
        at,
    )
    await pg.execute(
        "INSERT INTO message_reactions (guild_id, channel_id, message_id, user_id, emoji, event,"
        " at) VALUES ($1, 7, $2, 101, '🎉', 'add', $3)",
        guild,
        m,
        later,
    )
    await pg.execute(
        "INSERT INTO presence_events (guild_id, user_id, at, status, activity_types)"
        " VALUES ($1, 100, $2, 'idle', 0)",
        guild,
        at,
    )
    await pg.execute(
        "INSERT INTO dead_letter_rows (table_name, row, reason, guild_id, captured_at)"
        " VALUES ('message_events', '{}', 'test', $1, $2)",
        guild,
        at,
    )


async def _targets(endpoints: Endpoints) -> list[expiry_plan.Target]:
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        targets, problems = expiry_plan.plan_for(
            await privacy.clickhouse_tables(ch), await expiry_plan.clickhouse_catalogue(ch)
        )
    finally:
        await ch.close()
    assert problems == []
    return targets


async def _time_sets(endpoints: Endpoints) -> list[expiry_plan.TimeSets]:
    ch = await clickhouse_url_client(endpoints.clickhouse_url)
    try:
        return expiry_plan.time_sets(
            await privacy.clickhouse_tables(ch), await expiry_plan.clickhouse_catalogue(ch)
        )
    finally:
        await ch.close()


async def _rows_by_age(
    endpoints: Endpoints, pg: asyncpg.Connection, guild: int, now: datetime
) -> dict[str, dict[int, int]]:
    """Rows of ``guild`` per table, per staged age (read with FINAL; a table without any left
    out). A row belongs to the youngest staged age whose day it is not younger than."""
    out: dict[str, dict[int, int]] = {}
    today = now.date()
    for target in await _targets(endpoints):
        counts: dict[int, int] = {}
        below: date | None = None  # the upper end of the next older age's days
        for age in sorted(AGES, reverse=True):
            upper = today - timedelta(days=age - 1)
            where = f"guild_id = {{g:UInt64}} AND {target.before('{u:Date}')}"
            if below is not None:
                where += f" AND NOT {target.before('{b:Date}')}"
            n = await ch_value(
                endpoints,
                f"SELECT count() FROM `{target.table}` FINAL WHERE {where}",
                g=guild,
                u=upper,
                b=below or upper,
            )
            if n:
                counts[age] = int(n)
            below = upper
        if counts:
            out[target.table] = counts
    # One row per member with an array of days or a set of times: each element is counted
    # like a row.
    arrays = [(table, dates) for table, (dates, *_) in expiry_plan.CLICKHOUSE_DATE_ARRAYS.items()]
    arrays += [
        (sets.table, column) for sets in await _time_sets(endpoints) for column in sets.columns
    ]
    for table, dates in arrays:
        counts = {}
        below = None
        for age in sorted(AGES, reverse=True):
            upper = today - timedelta(days=age - 1)
            where = "guild_id = {g:UInt64} AND toDate(d, 'UTC') < {u:Date}"
            if below is not None:
                where += " AND toDate(d, 'UTC') >= {b:Date}"
            n = await ch_value(
                endpoints,
                f"SELECT count() FROM `{table}` FINAL ARRAY JOIN `{dates}` AS d WHERE {where}",
                g=guild,
                u=upper,
                b=below or upper,
            )
            if n:
                counts[age] = int(n)
            below = upper
        if counts:
            out[table] = counts
    dead = await pg.fetch("SELECT captured_at FROM dead_letter_rows WHERE guild_id = $1", guild)
    ages = [a for a in AGES for r in dead if (now - r["captured_at"]).days == a]
    if ages:
        out["dead_letter_rows"] = {a: ages.count(a) for a in sorted(set(ages))}
    return out


def _kept(before: dict[str, dict[int, int]], days: int) -> dict[str, dict[int, int]]:
    """What a window of ``days`` leaves of ``before``."""
    out = {t: {a: n for a, n in ages.items() if a < days} for t, ages in before.items()}
    return {t: ages for t, ages in out.items() if ages}


async def _active_partition(endpoints: Endpoints, table: str, partition: str) -> int:
    return int(
        await ch_value(
            endpoints,
            "SELECT count() FROM system.parts WHERE database = currentDatabase() AND active"
            " AND table = {t:String} AND partition_id = {p:String}",
            t=table,
            p=partition,
        )
    )


async def test_each_server_keeps_its_tiers_window_and_a_downgrade_shortens_it(
    migrated: Endpoints, pg: asyncpg.Connection, runtime: OperatorRuntime
) -> None:
    now = datetime.now(UTC)
    for guild in (FREE_G, PRO_G, ENT_G):
        for key, age in enumerate(AGES):
            await _stage(pg, guild, now - timedelta(days=age, hours=1), key)
    # Loaded before any tier exists: nothing is known about any window, so nothing expires.
    first = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert first.outcome == "caught_up", first.error
    before = {g: await _rows_by_age(migrated, pg, g, now) for g in (FREE_G, PRO_G, ENT_G)}
    for guild in (FREE_G, PRO_G, ENT_G):
        assert set(before[guild]) >= FED | FED_ARRAYS | {"dead_letter_rows"}
        assert all(set(ages) == set(AGES) for ages in before[guild].values())
    old = (now - timedelta(days=2000, hours=1)).strftime("%Y%m")
    assert await _active_partition(migrated, "messages", old) > 0

    # The operator seeds the tiers (free is the default) and applies two subscriptions.
    pro_uid, ent_uid = str(uuid.uuid4()), str(uuid.uuid4())
    await _subscribe(runtime, PRO_G, "pro", pro_uid, 1)
    await _subscribe(runtime, ENT_G, "enterprise", ent_uid, 1)
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.outcome == "caught_up", second.error
    assert await _rows_by_age(migrated, pg, FREE_G, now) == _kept(before[FREE_G], 30)
    assert await _rows_by_age(migrated, pg, PRO_G, now) == _kept(before[PRO_G], 365)
    assert await _rows_by_age(migrated, pg, ENT_G, now) == _kept(before[ENT_G], 1825)
    # Past every server's window: the partition went whole, not row by row.
    assert await _active_partition(migrated, "messages", old) == 0
    record = await pg.fetchrow("SELECT guilds, rows_expired, completed_at FROM history_expiry")
    assert record is not None
    assert record["guilds"] == 3  # ENT_G's only by the partition dropped and a dead letter
    assert json.loads(record["rows_expired"])["postgres.dead_letter_rows"] == 3 + 2 + 1
    # The operator exports the pass from Postgres, as it does the ETL's health.
    assert await etl_health.refresh(runtime.pool)
    exported = REGISTRY.get_sample_value(
        "herwa_operator_history_expiry_last_complete_timestamp_seconds"
    )
    assert exported == record["completed_at"].timestamp()
    assert (
        REGISTRY.get_sample_value(
            "herwa_operator_history_expiry_rows", {"table": "postgres.dead_letter_rows"}
        )
        == 6
    )

    # A downgrade from 365 to 30 days takes effect on the next run; nobody else changes.
    await _subscribe(runtime, PRO_G, "free", pro_uid, 2)
    third = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert third.outcome == "caught_up", third.error
    assert await _rows_by_age(migrated, pg, PRO_G, now) == _kept(before[PRO_G], 30)
    assert await _rows_by_age(migrated, pg, ENT_G, now) == _kept(before[ENT_G], 1825)
    assert await _rows_by_age(migrated, pg, FREE_G, now) == _kept(before[FREE_G], 30)

    # The subscription removed: the server falls back to the default tier's window.
    assert await revoke(runtime, ent_uid, ENT_G) == [ENT_G]
    fourth = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert fourth.outcome == "caught_up", fourth.error
    assert await _rows_by_age(migrated, pg, ENT_G, now) == _kept(before[ENT_G], 30)
    # The rollups a query reads are still exact for what is left.
    hourly = await ch_rows(
        migrated,
        "SELECT guild_id, sum(messages) FROM message_activity_hourly FINAL"
        " GROUP BY guild_id ORDER BY guild_id",
    )
    assert hourly == [(FREE_G, 1), (PRO_G, 1), (ENT_G, 1)]


async def test_cut_at_utc_midnight_bounded_idempotent_and_due_on_change(
    migrated: Endpoints, pg: asyncpg.Connection, runtime: OperatorRuntime
) -> None:
    now = datetime(2026, 6, 15, 13, 30, tzinfo=UTC)
    cut = datetime(2026, 5, 16, tzinfo=UTC)  # 30 days before 2026-06-15
    # Loaded while no tier exists, so the run's own pass (at the real date) keeps it all.
    await _stage(pg, FREE_G, cut, 1)
    await _stage(pg, FREE_G, cut - timedelta(milliseconds=1), 2)
    await _stage(pg, PRO_G, cut - timedelta(days=50), 3)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    await platform.seed(runtime.pool, runtime.platform)
    await _subscribe(runtime, PRO_G, "pro", str(uuid.uuid4()), 1)
    await pg.execute("DELETE FROM history_expiry")
    # Tables expired row by row, element by element and by rewriting their time sets.
    tables = len(await _targets(migrated)) + len(await _time_sets(migrated))
    tables += len(expiry_plan.CLICKHOUSE_DATE_ARRAYS)

    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        # No budget: each call deletes from one table only; nothing is recorded until the
        # pass is complete, and the next call carries on where the last one stopped.
        passes = []
        for _ in range(tables + 1):
            passes.append(await expiry.expire_due(pg, ch, 0.0, now=now))
            if passes[-1].complete:
                break
            assert await pg.fetchval("SELECT count(*) FROM history_expiry") == 0
        assert passes[-1].complete
        assert len(passes) > 2
        assert all(p.due for p in passes)
        for p in passes:
            assert len([t for t in p.rows if t.startswith("clickhouse.")]) <= 1
        assert await pg.fetchval("SELECT count(*) FROM history_expiry") == 1
        assert sum(n for p in passes for n in p.rows.values()) > 0
        # The row at UTC midnight of the cutoff day stays, the one a millisecond earlier goes
        # (key 2's second message, a second after its first, lies past the cutoff: it stays).
        base = FREE_G % 1000 * 1000
        assert await _messages(ch, FREE_G) == {base + 10, base + 11, base + 21}
        assert await _days(ch, FREE_G) == [date(2026, 5, 16)]
        assert len(await _messages(ch, PRO_G)) == 2  # 80 days old: inside pro's year
        # Done: the same day and windows find nothing due; nothing is deleted twice.
        again = await expiry.expire_due(pg, ch, 0.0, now=now)
        assert (again.due, again.rows) == (False, {})
        # The next UTC day is due again, and takes the day that left the window.
        tomorrow = await expiry.expire_due(pg, ch, 60.0, now=now + timedelta(days=1))
        assert (tomorrow.due, tomorrow.complete) == (True, True)
        expired = set(tomorrow.rows)
        assert {"clickhouse.messages", "clickhouse.message_activity_author_days"} <= expired
        assert await _messages(ch, FREE_G) == set()
        assert await _days(ch, FREE_G) == []
        assert len(await _messages(ch, PRO_G)) == 2
    finally:
        await ch.close()


async def _messages(ch: AsyncClient, guild: int) -> set[int]:
    result = await ch.query(
        "SELECT message_id FROM messages FINAL WHERE guild_id = {g:UInt64}", parameters={"g": guild}
    )
    return {int(r[0]) for r in result.result_rows}


async def _days(ch: AsyncClient, guild: int) -> list[date]:
    result = await ch.query(
        "SELECT DISTINCT day FROM message_activity_author_days FINAL WHERE guild_id = {g:UInt64}"
        " ORDER BY day",
        parameters={"g": guild},
    )
    return [r[0] for r in result.result_rows]


async def test_windows_from_outside_are_validated_and_kept_when_refused(
    migrated: Endpoints, pg: asyncpg.Connection, runtime: OperatorRuntime
) -> None:
    await platform.seed(runtime.pool, runtime.platform)
    bad = {
        101: '"30"',
        102: "0",
        103: "-5",
        104: "2.5",
        105: "true",
        106: str(10**12),
        107: "null",
    }
    longest = 108  # the longest window accepted: its cutoff lies before 1970, so none
    for guild, days in bad.items():
        await pg.execute(
            "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
            " source_name, source_uid) VALUES ($1, 'pro', '{}', $2::jsonb, 'n', 'x', $3)",
            guild,
            f'{{"history_days": {days}}}',
            str(guild),
        )
    await pg.execute(
        "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
        " source_name, source_uid) VALUES ($1, 'pro', '{}', $2::jsonb, 'n', 'x', 'l')",
        longest,
        f'{{"history_days": {history_windows.MAX_HISTORY_DAYS}}}',
    )
    await pg.execute(
        "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
        " source_name, source_uid) VALUES (-4, 'pro', '{}', '{\"history_days\": 1}', 'n', 'x', 'y')"
    )
    windows = await history_windows.windows(pg)
    assert windows.default == 30
    # Refused or unset: kept.
    assert windows.guilds == {**{g: None for g in bad}, longest: history_windows.MAX_HISTORY_DAYS}
    assert -4 not in windows.guilds
    assert len(windows.refused) == 7  # six bad values and the id ("null" is "not set")
    # A default tier with a bad window: servers without a subscription keep their history.
    await pg.execute(
        """UPDATE tiers SET quotas = quotas || '{"history_days": "forever"}' WHERE is_default"""
    )
    now = datetime.now(UTC)
    await _stage(pg, FREE_G, now - timedelta(days=400), 1)
    await _stage(pg, 102, now - timedelta(days=400), 1)
    await _stage(pg, longest, now - timedelta(days=400), 1)
    result = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error
    # The pass completed: nothing refused made it fail.
    assert await pg.fetchval("SELECT count(*) FROM history_expiry") == 1
    for guild in (FREE_G, 102, longest):
        assert (
            await ch_value(
                migrated, "SELECT count() FROM messages WHERE guild_id = {g:UInt64}", g=guild
            )
            == 2
        )
    assert (await history_windows.windows(pg)).default is None


async def test_every_table_holding_server_data_is_expired_including_later_ones(
    migrated: Endpoints, pg: asyncpg.Connection, runtime: OperatorRuntime
) -> None:
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        assert await expiry_plan.audit(pg, ch) == []
        targets = {t.table: t for t in await _targets(migrated)}
        sets = await _time_sets(migrated)
        assert sets == [
            expiry_plan.TimeSets(
                "voice_starts_by_member", ("joined_at",), "toDateTime64({}, 3, 'UTC')"
            )
        ]
        assert set(targets) | {s.table for s in sets} >= FED
        assert set(expiry_plan.CLICKHOUSE_DATE_ARRAYS) == FED_ARRAYS
        assert targets["member_count_snapshots"] == expiry_plan.Target(
            "member_count_snapshots", "day", "{}", True
        )
        assert targets["messages"].midnight == "toDateTime64({}, 3, 'UTC')"
        assert targets["command_usage"].midnight == "toDateTime({}, 'UTC')"
        # A table a later migration adds is expired without touching the module...
        await ch.command(
            "CREATE TABLE later_daily (guild_id UInt64, day Date, n UInt32)"
            " ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (guild_id, day)"
        )
        today = datetime.now(UTC).date()
        await ch.command(
            "INSERT INTO later_daily VALUES"
            f" ({FREE_G}, '{today - timedelta(days=31)}', 1),"
            f" ({FREE_G}, '{today - timedelta(days=30)}', 2),"
            f" ({PRO_G}, '{today - timedelta(days=31)}', 3)"
        )
        await platform.seed(runtime.pool, runtime.platform)
        await _subscribe(runtime, PRO_G, "pro", str(uuid.uuid4()), 1)
        outcome = await expiry.expire_due(pg, ch, 60.0)
        assert outcome.complete
        assert outcome.rows == {"clickhouse.later_daily": 1}
        rows = await ch.query("SELECT n FROM later_daily FINAL ORDER BY n")
        assert [r[0] for r in rows.result_rows] == [2, 3]
        # ...and one whose rows' age cannot be told, or a Postgres table not classified, is
        # reported rather than kept in silence.
        await ch.command(
            "CREATE TABLE later_timeless (guild_id UInt64, n UInt32) ENGINE = MergeTree"
            " ORDER BY guild_id"
        )
        await pg.execute("CREATE TABLE later_state (guild_id bigint, n int)")
        problems = await expiry_plan.audit(pg, ch)
        assert [p.split(":")[0] for p in problems] == [
            "clickhouse.later_timeless",
            "postgres.later_state",
        ]
    finally:
        await ch.close()
