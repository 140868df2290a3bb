"""The Grafana analytics dashboard's panels that answer what a command answers, from its SQL.

A number a member sees in Discord and the one an owner sees in Grafana must be the same, so
these panels run the statements of herwa.analytics themselves, with each query parameter
replaced by the Grafana expression that gives it (:data:`GRAFANA`): the guild and time zone
variables (percent-encoded, the only form safe inside a literal), the dashboard's time range,
bots excluded, every channel (the owner's view), and the weeks a retention cohort is followed
for. The dashboard JSON in the chart holds the result; ``python -m herwa.analytics.dashboard``
rewrites those panels' SQL in it and the tests fail while it differs
(tests/analytics/test_dashboard.py). The few panels written by hand are in
:data:`HAND_WRITTEN`, each with why, and tests/analytics/test_queries.py checks those that
show a command's figure against its query.
"""

# ruff: noqa: S608 - only this package's constant SQL is composed.

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from herwa.analytics.daily import active_members_sql, voice_sql
from herwa.analytics.growth import growth_sql, member_count_sql
from herwa.analytics.heatmap import heatmap_sql
from herwa.analytics.leaderboards import channel_stats_sql
from herwa.analytics.retention import cohort_sql

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "herwa" / "dashboards"
ANALYTICS = DASHBOARD / "analytics.json"
RETENTION_WEEKS = 8  # the /retention default

# Query parameter (or the bound expression around it) -> what Grafana substitutes.
GRAFANA = {
    "toDateTime({since:UInt32}, 'UTC')": "$__fromTime",
    "toDateTime({until:UInt32}, 'UTC')": "$__toTime",
    "{guild_id:UInt64}": "toUInt64('${guild:percentencode}')",
    "{tz:String}": "decodeURLComponent('${tz:percentencode}')",
    "{bots:Bool}": "false",
    "{weeks:UInt16}": f"toUInt16({RETENTION_WEEKS})",
    "{scoped:Bool}": "false",
    "{viewable:Array(UInt64)}": "CAST([] AS Array(UInt64))",
    "{listed:Array(UInt64)}": "CAST([] AS Array(UInt64))",
    "{unlisted:Bool}": "false",
}
TOP_CHANNELS = 20


def for_grafana(sql: str) -> str:
    """``sql`` with every query parameter replaced by its Grafana expression, on one line."""
    for parameter, expression in GRAFANA.items():
        sql = sql.replace(parameter, expression)
    if "{" in sql.replace("${", ""):
        raise ValueError(f"a query parameter has no Grafana expression: {sql}")
    return " ".join(sql.split())


# Panel title -> its SQL. The outer SELECTs only name and order the statements' columns.
PANELS = {
    "Activity heatmap (weekday \u00d7 hour, server time)": for_grafana(
        f"SELECT dow AS weekday, hour, total AS messages FROM ({heatmap_sql()})"
        " ORDER BY weekday, hour"
    ),
    "Member growth": for_grafana(
        "SELECT toDateTime(day, {tz:String}) AS time, joins, leaves, joins - leaves AS net"
        f" FROM ({growth_sql()}) ORDER BY time"
    ),
    "Retention by weekly join cohort": for_grafana(
        "SELECT toString(cohort) AS cohort, joined, n AS week, active,"
        " round(100 * active / joined, 1) AS `active %`, voice_active,"
        " round(100 * voice_active / joined, 1) AS `voice %`"
        f" FROM ({cohort_sql()}) ORDER BY cohort, week"
    ),
    "Top channels": for_grafana(
        "SELECT toString(channel_id) AS channel, n AS total_messages, authors"
        f" FROM ({channel_stats_sql()}) ORDER BY n DESC, channel_id LIMIT {TOP_CHANNELS}"
    ),
    "Active members per day": for_grafana(
        "SELECT toDateTime(day, {tz:String}) AS time, active_members"
        f" FROM ({active_members_sql()}) ORDER BY time"
    ),
    "Voice minutes per day": for_grafana(
        "SELECT toDateTime(day, {tz:String}) AS time,"
        " round(voice_seconds / 60, 1) AS voice_minutes, voice_members AS voice_users"
        f" FROM ({voice_sql()}) ORDER BY time"
    ),
    "Member count": for_grafana(
        "SELECT toDateTime(day) AS time, member_count AS members"
        f" FROM ({member_count_sql()}) ORDER BY time"
    ),
}

# Panels whose SQL is written here by hand, and why no statement of herwa.analytics is theirs.
HAND_WRITTEN = {
    "Messages over time": (
        "Grafana's own interval ($__timeInterval), which no command has; its buckets add up"
        " to the heatmap's and /export's figures (tests/analytics/test_queries.py)"
    ),
    "Activity by hour of day": (
        "a day x hour grid, which no command draws; its rows add up to the heatmap's cells"
        " and to /export's messages per day (tests/analytics/test_queries.py)"
    ),
    "Slash command usage": (
        "invocations per command and outcome, which no command shows (/usage counts the"
        " quota in Postgres); ClickHouse's command_usage is its only source"
    ),
}


def render(dashboard: dict[str, Any]) -> dict[str, Any]:
    """``dashboard`` with the SQL of the panels in :data:`PANELS` replaced."""
    panels = dashboard["panels"]
    missing = set(PANELS) - {p["title"] for p in panels}
    if missing:
        raise ValueError(f"panels not in the dashboard: {sorted(missing)}")
    for panel in panels:
        if panel["title"] in PANELS:
            (target,) = panel["targets"]
            target["rawSql"] = PANELS[panel["title"]]
    return dashboard


def main(path: Path = ANALYTICS) -> None:
    dashboard = render(json.loads(path.read_text()))
    path.write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ANALYTICS)
