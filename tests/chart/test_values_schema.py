"""values.schema.json (and the chart's cross-value checks) reject bad values with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.chart._chart import CHART, EXAMPLES, helm
from tests.support.kube import KubeTools

SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# (helm arguments, text the error must contain): each names the key and what is wrong.
BAD_VALUES: list[tuple[tuple[str, ...], str]] = [
    (("--set", "bot.replicas=-1"), "bot.replicas: Must be greater than or equal to 0"),
    (("--set", "bot.replica=3"), "bot: Additional property replica is not allowed"),
    (("--set", "bot.shardCount=0"), "bot.shardCount"),
    (("--set", "bot.shutdownGraceSeconds=0"), "bot.shutdownGraceSeconds"),
    (("--set", "bot.reshardHoldSeconds=30"), "bot.reshardHoldSeconds"),
    (("--set", "bot.podManagementPolicy=Sometimes"), "bot.podManagementPolicy"),
    (("--set-string", "bot.pdb.maxUnavailable=lots"), "bot.pdb.maxUnavailable"),
    (("--set-string", "etl.schedule=every five minutes"), "etl.schedule: Does not match pattern"),
    (("--set", "etl.startingDeadlineSeconds=5"), "etl.startingDeadlineSeconds"),
    (("--set", "etl.batchRows=10"), "etl.batchRows: Must be greater than or equal to 1000"),
    (("--set", "telemetry.port=70000"), "telemetry.port: Must be less than or equal to 65535"),
    (("--set", "telemetry.logLevel=LOUD"), "telemetry.logLevel"),
    (("--set-string", "secrets.postgresDsn=mysql://u:p@h/db"), "secrets.postgresDsn"),
    (("--set-string", "secrets.clickhouseUrl=tcp://h:9000"), "secrets.clickhouseUrl"),
    (("--set-string", "image.digest=latest"), "image.digest"),
    (("--set", "image.pullPolicy=Sometimes"), "image.pullPolicy"),
    (("--set", "securityContext.runAsNonRoot=false"), "securityContext.runAsNonRoot"),
    (("--set", "podSecurityContext.runAsUser=0"), "podSecurityContext.runAsUser"),
    (("--set-string", "metrics.serviceMonitor.interval=often"), "metrics.serviceMonitor.interval"),
    (
        ("--set", "metrics.prometheusRule.thresholds.quotaExhaustedRatio=2"),
        "metrics.prometheusRule.thresholds.quotaExhaustedRatio",
    ),
    (("--set-string", "grafana.dashboards.label=not a label"), "grafana.dashboards.label"),
    (("--set-string", "guildDefaults.timezone=Mars/Olympus Mons"), "guildDefaults.timezone"),
    (("--set-string", "platform.tiers[0].name=Free Tier"), "platform.tiers.0.name"),
    (("--set-string", "platform.default_tier=Free Tier"), "platform.default_tier"),
    (("--set", "unknownKey=1"), "Additional property unknownKey is not allowed"),
    # Cross-value checks in the templates.
    (
        ("--set", "bot.terminationGracePeriodSeconds=20"),
        "bot.terminationGracePeriodSeconds (20) must be larger than bot.shutdownGraceSeconds (25)",
    ),
    (
        ("--set", "etl.deadlineSeconds=900"),
        "etl.deadlineSeconds (900) must be smaller than etl.activeDeadlineSeconds (900)",
    ),
    (
        ("--set", "bot.shardCount=1", "--set", "bot.replicas=2"),
        "bot.shardCount (1) is smaller than bot.replicas (2)",
    ),
    (
        (
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.podMonitor.enabled=true",
        ),
        "pick one",
    ),
]


@pytest.fixture(scope="module")
def helm_bin(kube_tools: KubeTools) -> Path:
    return kube_tools.helm


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_rejected(helm_bin: Path, args: tuple[str, ...], message: str) -> None:
    result = helm(helm_bin, "template", "herwa", CHART, *args, check=False)
    assert result.returncode != 0, f"accepted {args}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "path",
    [CHART / "values.yaml", *sorted(EXAMPLES.glob("*.yaml"))],
    ids=lambda p: p.name,
)
def test_shipped_values_match_the_schema(path: Path) -> None:
    """The defaults and every example satisfy the schema (merged over the defaults, like helm)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = _merge(defaults, yaml.safe_load(path.read_text()) or {})
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(values)


def test_every_default_key_is_described_by_the_schema() -> None:
    """additionalProperties is false wherever values.yaml has a fixed shape, so a typo fails."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: object, schema: dict[str, object], where: str) -> None:
        if not isinstance(value, dict) or schema.get("additionalProperties") is not False:
            return
        props = schema["properties"]
        assert isinstance(props, dict)
        for key, sub in value.items():
            assert key in props, f"{where}{key} is missing from values.schema.json"
            walk(sub, props[key], f"{where}{key}.")

    walk(defaults, SCHEMA, "")


def _merge(base: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in override.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = _merge(current, value)
        else:
            out[key] = value
    return out
