"""The chart's alert rules: `promtool check rules` and a `promtool test rules` case per alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart._chart import render
from tests.support.kube import KubeTools

HERE = Path(__file__).parent
UNIT_TESTS = HERE / "alerts.test.yaml"

# unit test file → values its rules are rendered with
UNIT_TEST_FILES = {
    UNIT_TESTS: (),
    # Discord's recommended shard count: the unowned-shards rule must still exist and fire.
    HERE / "alerts-no-shard-count.test.yaml": ("--set", "bot.shardCount=null"),
}


RUNBOOKS = Path(__file__).resolve().parents[2] / "charts" / "herwa" / "RUNBOOKS.md"
RUNBOOK_BASE = "https://runbooks.example.org/herwa/RUNBOOKS.md"


def rendered_groups(helm_bin: Path, *values: str) -> list[dict[str, Any]]:
    rule = render(helm_bin, "--set", "metrics.prometheusRule.enabled=true", *values).one(
        "PrometheusRule"
    )
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _promtool(tools: KubeTools, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.promtool), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules(kube_tools: KubeTools, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": rendered_groups(kube_tools.helm)})
    )
    result = _promtool(kube_tools, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_runbook_text(kube_tools: KubeTools) -> None:
    base = f"metrics.prometheusRule.runbookBaseUrl={RUNBOOK_BASE}"
    rules = [r for g in rendered_groups(kube_tools.helm, "--set", base) for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert alerts == {
        "HerwaShardDisconnected",
        "HerwaShardsUnowned",
        "HerwaBotsDown",
        "HerwaFlushFailing",
        "HerwaRowsDropped",
        "HerwaDeadLetterRows",
        "HerwaEtlLagHigh",
        "HerwaEtlRunFailed",
        "HerwaEtlNotSucceeding",
        "HerwaEtlHealthUnknown",
        "HerwaOperatorReconcileErrors",
        "HerwaQuotaExhaustion",
    }
    for rule in rules:
        ann = rule["annotations"]
        assert "Runbook:" in ann["description"], rule["alert"]
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{rule['alert'].lower()}"
        assert f"\n## {rule['alert']}\n" in RUNBOOKS.read_text(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    # Without a published location no alert carries a dangling link.
    for group in rendered_groups(kube_tools.helm):
        for rule in group["rules"]:
            assert "runbook_url" not in rule.get("annotations", {}), rule.get("alert")
    tests = [t for f in UNIT_TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]]
    firing = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    quiet = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]
    }
    assert firing == alerts, f"alerts never tested firing: {alerts - firing}"
    assert quiet == alerts, f"alerts never tested staying quiet: {alerts - quiet}"


@pytest.mark.parametrize("tests", sorted(UNIT_TEST_FILES), ids=lambda p: p.name)
def test_promtool_unit_tests(kube_tools: KubeTools, tmp_path: Path, tests: Path) -> None:
    groups = rendered_groups(kube_tools.helm, *UNIT_TEST_FILES[tests])
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"].pop("description")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(tests, tmp_path / tests.name)
    result = _promtool(kube_tools, "test", "rules", tests.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
