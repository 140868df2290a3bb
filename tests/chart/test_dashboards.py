"""Grafana dashboards: shape, datasources, and every ClickHouse query run for real.

The analytics dashboard's SQL is expanded the way the ClickHouse datasource plugin expands it
($__timeFilter, $__fromTime, $__toTime, $__timeInterval, dashboard variables) and run with the
read-only user against a fresh database at the project's schema, filled with a month of demo
activity; the message rollups are computed by the ETL's own code. Every query must return rows.
"""

# ruff: noqa: S608 - demo data statements built from constants of this module

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from herwa.devstack import Endpoints
from herwa.etl.rollups import recompute
from herwa.stores import clickhouse_url_client
from tests.chart._chart import CHART

DASHBOARDS = {
    p.stem: json.loads(p.read_text()) for p in sorted((CHART / "dashboards").glob("*.json"))
}
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
GUILD = 412345678901234567
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = NOW - timedelta(days=35)


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboards_are_well_formed() -> None:
    assert set(DASHBOARDS) == {"analytics", "operations"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    for dashboard in DASHBOARDS.values():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids), dashboard["uid"]
        for panel in dashboard["panels"]:
            assert panel["title"], panel
            assert panel["targets"], panel
    analytics = DASHBOARDS["analytics"]
    variables = {v["name"]: v for v in analytics["templating"]["list"]}
    assert variables["guild"]["datasource"]["type"] == CLICKHOUSE_PLUGIN
    assert variables["clickhouse"]["query"] == CLICKHOUSE_PLUGIN
    for title, target in targets(analytics):
        assert target["datasource"]["type"] == CLICKHOUSE_PLUGIN, title
        sql = target["rawSql"]
        assert "${guild:percentencode}" in sql, f"{title}: not bound to the guild variable"
        # Grafana's sqlstring format doubles quotes but keeps backslashes, which ClickHouse
        # reads as escapes: only percent-encoded values are safe inside a literal.
        assert not re.findall(r"\$\{(?:guild|tz)(?!:percentencode\})", sql), title
        assert "FINAL" in target["rawSql"], f"{title}: ReplacingMergeTree read without FINAL"
    for title, target in targets(DASHBOARDS["operations"]):
        assert target["datasource"]["type"] == "prometheus", title
        assert target["expr"].strip(), title
    topics = " ".join(p["title"].lower() for p in analytics["panels"])
    for topic in ("heatmap", "retention", "growth", "channels", "voice"):
        assert topic in topics
    ops = " ".join(p["title"].lower() for p in DASHBOARDS["operations"]["panels"])
    for topic in (
        "shards",
        "latency",
        "events",
        "flush",
        "etl ingestion lag",
        "etl rows",
        "reconciles",
        "command outcomes",
    ):
        assert topic in ops


def expand(
    sql: str, variables: dict[str, str], since: datetime, until: datetime, interval_s: int = 3600
) -> str:
    """The ClickHouse plugin's macros and Grafana's variables, as they expand at query time."""
    lo, hi = int(since.timestamp()), int(until.timestamp())
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} >= toDateTime({lo}) AND {m.group(1)} <= toDateTime({hi})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([^)]+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL {interval_s} second)",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({lo})").replace("$__toTime", f"toDateTime({hi})")
    for name, value in variables.items():
        sql = sql.replace("${" + name + "}", value)
        # encodeURIComponent with !'()* encoded too, as Grafana's percentencode format does.
        sql = sql.replace("${" + name + ":percentencode}", quote(value, safe="-_.~"))
    leftover = re.findall(r"\$\{?\w+", sql)
    assert not leftover, f"unexpanded macros or variables: {leftover}"
    return sql


def demo_sql(db_start: datetime) -> list[str]:
    """A month of activity in one guild: 20 members, 5 channels, voice, joins, snapshots, usage."""
    t0 = int(db_start.timestamp())
    g = GUILD
    return [
        f"""INSERT INTO messages (message_id, guild_id, channel_id, author_id, created_at, kind,
                is_bot, version)
            SELECT 1000000 + number, {g}, 100 + number % 5, 500 + number % 20,
                   toDateTime64({t0} + number * 487, 3, 'UTC'), 'text', number % 50 = 0, 1
            FROM numbers(6000)""",
        f"""INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, channel_kind,
                joined_at, left_at, duration_seconds, muted_seconds, close_reason, is_bot, version)
            SELECT generateUUIDv4(), {g}, 200, 500 + number % 20, 'voice',
                   toDateTime64({t0} + number * 9000, 3, 'UTC'),
                   toDateTime64({t0} + number * 9000 + 1800, 3, 'UTC'), 1800, 0, 'leave', false, 1
            FROM numbers(300)""",
        f"""INSERT INTO member_events (guild_id, user_id, event, at, account_created_at, is_bot,
                version)
            SELECT {g}, 500 + number, 'join', toDateTime64({t0} + number * 3600, 3, 'UTC'),
                   toDateTime64({t0} - 86400 * 400, 3, 'UTC'), false, 1
            FROM numbers(20)""",
        f"""INSERT INTO member_events (guild_id, user_id, event, at, account_created_at, is_bot,
                version)
            SELECT {g}, 900 + number, event, toDateTime64({t0} + 86400 * (1 + number), 3, 'UTC'),
                   toDateTime64({t0} - 86400 * 30, 3, 'UTC'), false, 1
            FROM numbers(30) ARRAY JOIN ['join', 'leave'] AS event WHERE number % 3 = 0
               OR event = 'join'""",
        f"""INSERT INTO member_count_snapshots (guild_id, day, member_count, taken_at)
            SELECT {g}, toDate({t0} + number * 86400), 100 + number,
                   toDateTime64({t0} + number * 86400, 3, 'UTC')
            FROM numbers(35)""",
        f"""INSERT INTO command_usage (drain_id, guild_id, command, hour, outcome, invocations,
                version)
            SELECT 'demo', {g}, ['heatmap', 'overview', 'export'][number % 3 + 1],
                   toDateTime({t0} + number * 3600, 'UTC'),
                   ['ok', 'ok', 'denied', 'over_quota'][number % 4 + 1], 1 + number % 7, 1
            FROM numbers(200)""",
    ]


@pytest.mark.slow
async def test_every_analytics_query_returns_rows(migrated: Endpoints) -> None:
    writer = await clickhouse_url_client(migrated.clickhouse_url)
    reader = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:
        for statement in demo_sql(START):
            await writer.command(statement)
        # The ETL's rollup maintenance turns the raw messages into the rollup tables.
        hours = await writer.query(
            "SELECT DISTINCT guild_id, toUInt32(toStartOfHour(created_at)) FROM messages"
        )
        await recompute(writer, [(int(g), int(h)) for g, h in hours.result_rows])

        variables: dict[str, str] = {"tz": "Europe/Berlin"}
        guild_var = next(
            v for v in DASHBOARDS["analytics"]["templating"]["list"] if v["name"] == "guild"
        )
        options = (await reader.query(guild_var["query"])).result_rows
        assert [str(GUILD)] in [list(o) for o in options]
        variables["guild"] = str(GUILD)

        for title, target in targets(DASHBOARDS["analytics"]):
            sql = expand(target["rawSql"], variables, NOW - timedelta(days=30), NOW)
            result = await reader.query(sql)
            assert result.result_rows, f"{title}: no rows for the demo guild\n{sql}"
            assert any(any(v not in (0, None, "") for v in row) for row in result.result_rows)

        # Values a viewer can put in the URL (?var-guild=…&var-tz=…) stay one literal: the
        # query finds no such guild or time zone, it never runs SQL of the viewer's making.
        hostile = [
            {"guild": "0') OR toUInt64('1') = toUInt64('1", "tz": "UTC"},
            {"guild": "0\\') OR 1=1 -- ", "tz": "UTC"},
            {"guild": str(GUILD), "tz": "UTC') AS x, 1 AS y --"},
            {"guild": str(GUILD), "tz": "UTC\\'"},
        ]
        for values in hostile:
            for title, target in targets(DASHBOARDS["analytics"]):
                sql = expand(target["rawSql"], values, NOW - timedelta(days=30), NOW)
                refused = ""
                try:
                    rows = (await reader.query(sql)).result_rows
                except DatabaseError as exc:
                    rows, refused = [], str(exc)
                assert "Syntax error" not in refused, f"{title}: {values} broke out\n{sql}"
                assert values["guild"].isdigit() or not rows, (
                    f"{title}: rows for a guild id that is not a number: {values}\n{sql}"
                )
    finally:
        await writer.close()
        await reader.close()


def test_expand_matches_the_plugin_macros() -> None:
    since, until = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC)
    out = expand(
        "WHERE $__timeFilter(at) AND x >= $__fromTime AND g = ${guild}",
        {"guild": "1"},
        since,
        until,
    )
    assert out == (
        "WHERE at >= toDateTime(1735689600) AND at <= toDateTime(1735776000) AND "
        "x >= toDateTime(1735689600) AND g = 1"
    )
    with pytest.raises(AssertionError, match="unexpanded"):
        expand("$__unknownMacro(x)", {}, since, until)
