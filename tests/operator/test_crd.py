"""The CRD offline: the chart ships the same file, and the examples fare as their names say."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from herwa.operator.model import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "k8s" / "crds" / "guildsubscription.yaml"
EXAMPLES = REPO / "k8s" / "examples"


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


_FORMATS = jsonschema.FormatChecker()


def _date_time(value: object) -> bool:
    # jsonschema checks date-time only with an optional package; the API server always does.
    if not isinstance(value, str) or "T" not in value.upper():
        return False
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


_FORMATS.checks("date-time", raises=ValueError)(_date_time)


def _validator() -> jsonschema.Draft4Validator:
    # Kubernetes structural schemas are OpenAPI v3 (≈ draft 4) plus x-kubernetes-* keywords.
    return jsonschema.Draft4Validator(_schema(), format_checker=_FORMATS)


@pytest.mark.parametrize("name", ["guildsubscription.yaml", "kopfpeering.yaml"])
def test_chart_ships_the_same_crds(name: str) -> None:
    assert (REPO / "charts" / "herwa" / "crds" / name).read_bytes() == (
        REPO / "k8s" / "crds" / name
    ).read_bytes()


def test_printer_columns_and_status_subresource() -> None:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Guild", "Tier", "Ready", "Expires", "Age"]
    assert version["subresources"] == {"status": {}}
    assert _schema()["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_valid_examples_pass_the_schema(path: Path) -> None:
    _validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "invalid").glob("rejected-*.yaml")), ids=lambda p: p.name
)
def test_rejected_examples_fail_the_schema(path: Path) -> None:
    errors = list(_validator().iter_errors(yaml.safe_load(path.read_text())))
    assert errors, f"{path.name} should be rejected by the schema"


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "invalid").glob("status-*.yaml")), ids=lambda p: p.name
)
def test_status_examples_pass_the_schema(path: Path) -> None:
    # Only the operator can tell these apart: the tier/feature lists are configuration.
    _validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("guild", "valid"),
    [
        ("10000000000000000", True),  # the smallest 17-digit id
        ("999999999999999999", True),
        ("1000000000000000000", True),
        ("9223372036854775799", True),
        ("9223372036854775807", True),  # int64 maximum
        ("9223372036854775808", False),
        ("9223372036854775810", False),
        ("9300000000000000000", False),
        ("9999999999999999999", False),
        ("99999999999999999999", False),
        ("9999999999999999", False),
        ("01234567890123456", False),
    ],
)
def test_guild_id_pattern_caps_at_int64_like_the_model(guild: str, valid: bool) -> None:
    obj = {"apiVersion": "herwa.dev/v1alpha1", "kind": "GuildSubscription", "metadata": {}}
    obj["spec"] = {"guildId": guild, "tier": "pro"}
    assert (not list(_validator().iter_errors(obj))) is valid
    try:
        parse_spec({"guildId": guild, "tier": "pro"})
        model_valid = True
    except SpecError:
        model_valid = False
    assert model_valid is valid
