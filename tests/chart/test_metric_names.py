"""Every metric the dashboards and alert rules name is one the code really exports.

The bot's and operator's metrics are scraped live: their metrics modules are imported (which
registers them exactly as the roles do) and the roles' own TelemetryServer serves /metrics over
HTTP. The ETL exposes its run registry through the Pushgateway; the same registry is served and
scraped here. Names are compared as Prometheus sees them (counters with _total, histograms with
_bucket/_sum/_count), whether or not a labelled metric has samples yet.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import herwa
from herwa.etl.metrics import EtlMetrics
from herwa.telemetry import TelemetryServer
from tests.chart._chart import ALL_ON, CHART, render
from tests.chart.test_dashboards import DASHBOARDS
from tests.support.kube import KubeTools

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def referenced(expressions: Iterable[str]) -> dict[str, set[str]]:
    """herwa_* metric names per expression source, string literals (label values) removed."""
    found: dict[str, set[str]] = {}
    for expr in expressions:
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for name in re.findall(r"\bherwa_[a-zA-Z0-9_]+\b", code):
            found.setdefault(name, set()).add(expr)
    return found


def exposed_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


async def scrape(registry: CollectorRegistry) -> str:
    async with (
        TelemetryServer("127.0.0.1", 0, registry=registry) as server,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def import_metric_modules() -> list[str]:
    """Every herwa module named *metrics* (bot, etl, operator, commands, …), registered the
    way the role registers it. Found on disk (role folders may be namespace packages)."""
    package = Path(herwa.__file__).parent
    imported = []
    for dirpath, _dirs, files in os.walk(package, followlinks=True):
        for name in sorted(files):
            if name.endswith("metrics.py"):
                rel = (Path(dirpath) / name).relative_to(package).with_suffix("")
                module = ".".join(("herwa", *rel.parts))
                importlib.import_module(module)
                imported.append(module)
    return imported


@pytest.fixture(scope="module")
def promql(kube_tools: KubeTools) -> list[str]:
    rule = render(kube_tools.helm, *ALL_ON).one("PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    ops = DASHBOARDS["operations"]
    exprs += [t["expr"] for p in ops["panels"] for t in p["targets"]]
    for var in ops["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


async def test_every_referenced_metric_is_exported(promql: list[str]) -> None:
    modules = import_metric_modules()
    assert {"herwa.bot.metrics", "herwa.operator.metrics", "herwa.etl.metrics"} <= set(modules)
    from herwa.operator.metrics import ETL_HEALTH, EtlState

    # The ETL's health is exported once the operator has read it from Postgres.
    ETL_HEALTH.record(
        EtlState(
            {"message_events": 0.0},
            0.0,
            last_run_rows={"message_events": 0},
            last_run_seconds=1.0,
        )
    )
    exported = exposed_names(await scrape(REGISTRY))
    exported |= exposed_names(await scrape(EtlMetrics().registry))
    assert any(n.startswith("herwa_bot_") for n in exported)
    wanted = referenced(promql)
    assert len(wanted) >= 20
    missing = sorted(set(wanted) - exported)
    assert not missing, "named in dashboards/rules but exported by no role: " + ", ".join(missing)


def test_the_reference_extractor() -> None:
    refs = referenced(['sum(rate(herwa_a_total{job="herwa_etl"}[5m])) / herwa_b'])
    assert set(refs) == {"herwa_a_total", "herwa_b"}
    assert "herwa_x_total" in exposed_names("# TYPE herwa_x counter\n")
    assert CHART.joinpath("dashboards").is_dir()


def test_label_values_in_rules_are_real_outcomes(kube_tools: KubeTools) -> None:
    """The quota alert and the operator alert select outcomes the code really records."""
    from herwa.bot.commands import CommandOutcome
    from herwa.operator import metrics as operator_metrics

    rule = render(kube_tools.helm, *ALL_ON).one("PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    command_outcomes = set(
        re.findall(r'herwa_command_invocations_total\{[^}]*outcome="(\w+)"', exprs)
    )
    assert command_outcomes, "the quota alert selects no outcome"
    assert command_outcomes <= {o.value for o in CommandOutcome}
    assert 'outcome="error"' in exprs
    assert any("error" in m.documentation for m in operator_metrics.RECONCILES.describe())
