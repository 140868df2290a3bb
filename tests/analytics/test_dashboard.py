"""The Grafana analytics panels that answer what a command answers run its very statement."""

from __future__ import annotations

import json

import pytest

from herwa.analytics import dashboard


def test_panels_hold_the_statements_of_herwa_analytics() -> None:
    panels = {p["title"]: p for p in json.loads(dashboard.ANALYTICS.read_text())["panels"]}
    for title, sql in dashboard.PANELS.items():
        (target,) = panels[title]["targets"]
        assert target["rawSql"] == sql, (
            f"{title}: the dashboard's SQL is not herwa.analytics' any more; run"
            " `python -m herwa.analytics.dashboard` and commit the dashboard"
        )


def test_every_query_parameter_has_a_grafana_expression() -> None:
    with pytest.raises(ValueError, match="no Grafana expression"):
        dashboard.for_grafana("SELECT {page:UInt16}")
    assert dashboard.for_grafana("WHERE guild_id = {guild_id:UInt64}\n  AND x") == (
        "WHERE guild_id = toUInt64('${guild:percentencode}') AND x"
    )


def test_every_panel_is_generated_or_written_by_hand_for_a_stated_reason() -> None:
    titles = [p["title"] for p in json.loads(dashboard.ANALYTICS.read_text())["panels"]]
    assert len(titles) == len(set(titles))
    assert not set(dashboard.PANELS) & set(dashboard.HAND_WRITTEN)
    # A new panel with SQL of its own fails here until it is generated or given its reason.
    assert set(titles) == set(dashboard.PANELS) | set(dashboard.HAND_WRITTEN)
    assert all(len(why) > 40 for why in dashboard.HAND_WRITTEN.values())
