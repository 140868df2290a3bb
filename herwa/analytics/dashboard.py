"""The Grafana analytics dashboard's panels that answer what a command answers, from its SQL.

A number a member sees in Discord and the one an owner sees in Grafana must be the same, so
these panels run the statements of herwa.analytics themselves, with each query parameter
replaced by the Grafana expression that gives it (:data:`GRAFANA`): the guild and time zone
variables (percent-encoded, the only form safe inside a literal), the dashboard's time range,
bots excluded, and the weeks a retention cohort is followed for. The dashboard JSON in the chart
holds the result; ``python -m herwa.analytics.dashboard`` rewrites those panels' SQL in it and
the tests fail while it differs (tests/analytics/test_dashboard.py).
"""

# ruff: noqa: S608 - only this package's constant SQL is composed.

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from herwa.analytics.growth import growth_sql
from herwa.analytics.heatmap import heatmap_sql
from herwa.analytics.retention import cohort_sql

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "herwa" / "dashboards"
ANALYTICS = DASHBOARD / "analytics.json"
RETENTION_WEEKS = 8  # the /retention default

# Query parameter (or the bound expression around it) -> what Grafana substitutes.
GRAFANA = {
    "toDateTime64({since:UInt32}, 3, 'UTC')": "toDateTime64($__fromTime, 3, 'UTC')",
    "toDateTime64({until:UInt32}, 3, 'UTC')": "toDateTime64($__toTime, 3, 'UTC')",
    "{guild_id:UInt64}": "toUInt64('${guild:percentencode}')",
    "{tz:String}": "decodeURLComponent('${tz:percentencode}')",
    "{bots:Bool}": "false",
    "{weeks:UInt16}": f"toUInt16({RETENTION_WEEKS})",
}


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
