"""Rendering the Helm chart for the tests: real helm, parsed manifests, small lookups."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "herwa"
EXAMPLES = CHART / "examples"
RELEASE = "herwa"
NAMESPACE = "herwa"

# The connection settings every install needs (rendering fails without them).
STORES: tuple[str, ...] = (
    "--set-string",
    "secrets.discordToken=token",
    "--set-string",
    "secrets.postgresDsn=postgresql://herwa:pw@pg:5432/herwa",
    "--set-string",
    "secrets.redisUrl=redis://redis:6379/0",
    "--set-string",
    "secrets.clickhouseUrl=http://herwa:pw@ch:8123/herwa",
)

# Values that make every optional object render: monitors, rules, dashboards, egress policy.
ALL_ON: tuple[str, ...] = (
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "grafana.dashboards.enabled=true",
    "--set",
    "networkPolicy.restrictEgress=true",
    *STORES,
)

# name → extra helm arguments; every one must lint and render.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": STORES,
    "small": (*STORES, "-f", str(EXAMPLES / "values-small.yaml")),
    "large": (*STORES, "-f", str(EXAMPLES / "values-large.yaml")),
    "all-on": ALL_ON,
}


def helm(helm_bin: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_bin), *map(str, args)], capture_output=True, text=True, check=check, timeout=120
    )


@dataclass(frozen=True)
class Manifests:
    docs: list[dict[str, Any]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.docs)

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.all(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
        return found[0]


def render(
    helm_bin: Path,
    *args: str,
    kube_version: str | None = None,
    release: str = RELEASE,
    stores: bool = True,
    namespace: str = NAMESPACE,
) -> Manifests:
    """``helm template``; with ``stores`` the connection settings come first (``args`` may
    override them, or name an existingSecret instead)."""
    cmd: list[str | Path] = [
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        *(STORES if stores else ()),
        *args,
    ]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    out = helm(helm_bin, *cmd).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return Manifests(docs)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a workload (StatefulSet, Deployment, Job, CronJob) or of a Pod."""
    spec = obj["spec"]
    if obj["kind"] == "Pod":
        return dict(spec)
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


WORKLOADS = ("StatefulSet", "Deployment", "Job", "CronJob", "Pod")


def workloads(manifests: Manifests) -> list[dict[str, Any]]:
    return [d for d in manifests if d["kind"] in WORKLOADS]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def names(seq: Sequence[dict[str, Any]]) -> list[str]:
    return [d["metadata"]["name"] for d in seq]
