"""The kustomize base: generated from the chart, builds with kubectl's kustomize, validates."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart._chart import ROOT
from tests.chart.kustomize_base import BASE, build
from tests.support.kube import KubeCluster, KubeTools

CUSTOM = {"ClusterKopfPeering"}
NOT_ON_1_20 = {("batch/v1", "CronJob"), ("policy/v1", "PodDisruptionBudget")}


def kustomize(tools: KubeTools) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(tools.kubectl), "kustomize", str(ROOT / "k8s")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_base_is_the_chart(kube_tools: KubeTools) -> None:
    expected = build(kube_tools.helm)
    committed = {p.name: p.read_text() for p in BASE.glob("*.yaml")}
    assert committed == expected, (
        "k8s/base differs from the chart: run .venv/bin/python -m tests.chart.kustomize_base"
    )


@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])
def test_kustomize_build_validates(kube_tools: KubeTools, version: str) -> None:
    docs = kustomize(kube_tools)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "StatefulSet", "CronJob", "Deployment"} <= kinds
    for doc in docs:
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "herwa", doc["metadata"]["name"]
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "herwa"


@pytest.mark.kube
def test_kustomize_build_server_dry_run(kube_tools: KubeTools, kube_cluster: KubeCluster) -> None:
    """What 1.20 serves is accepted by the real API server (CronJob/PDB: offline above)."""
    kube_cluster.create_namespace("herwa")
    docs = [
        d
        for d in kustomize(kube_tools)
        if (d["apiVersion"], d["kind"]) not in NOT_ON_1_20 and d["kind"] not in CUSTOM
    ]
    result = kube_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)
