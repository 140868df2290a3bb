"""Writes k8s/base from the Helm chart, so the plain manifests never drift from it.

    .venv/bin/python -m tests.chart.kustomize_base [path/to/helm]

The base is the chart rendered for release "herwa" in namespace "herwa" with the Kubernetes
1.25+ API versions, secrets from an existing Secret named "herwa" (create it yourself; keys in
the comment in k8s/base/kustomization.yaml), Helm's own labels dropped, and the migration hook
turned into a plain Job (kustomize has no hooks: delete the finished Job before re-applying a
new image). tests/chart/test_kustomize.py fails when the committed base differs from this.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from tests.chart._chart import ROOT, render

BASE = ROOT / "k8s" / "base"
ARGS = ("--set", "secrets.existingSecret=herwa", "--set", "metrics.prometheusRule.enabled=false")
HOOK_ANNOTATIONS = ("helm.sh/hook", "helm.sh/hook-weight", "helm.sh/hook-delete-policy")
HEADER = "# Generated from charts/herwa by `python -m tests.chart.kustomize_base`; do not edit.\n"


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        labels = obj.get("labels")
        if isinstance(labels, dict):
            labels.pop("helm.sh/chart", None)
            if labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels["app.kubernetes.io/managed-by"] = "kustomize"
        annotations = obj.get("annotations")
        if isinstance(annotations, dict):
            for key in HOOK_ANNOTATIONS:
                annotations.pop(key, None)
            if not annotations:
                obj.pop("annotations")
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def build(helm_bin: Path) -> dict[str, str]:
    """File name → content of every file in k8s/base."""
    files: dict[str, str] = {}
    for doc in render(helm_bin, *ARGS, kube_version="1.25.0"):
        doc = _clean(doc)
        doc["metadata"].pop("namespace", None)  # set by the kustomization
        name = f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        files[name] = HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)
    resources = sorted(files)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "herwa",
        "resources": resources,
    }
    files["kustomization.yaml"] = (
        HEADER
        + (
            "# The Herwa workloads without Helm. Needs a Secret named `herwa` in the namespace\n"
            "# with the "
            "keys discord-token, postgres-dsn, redis-url, clickhouse-url (and optionally\n"
            "# clickhouse-readonly-url); k8s/kustomization.yaml adds the CRDs.\n"
        )
        + yaml.safe_dump(kustomization, sort_keys=False)
    )
    return files


def write(helm_bin: Path) -> None:
    BASE.mkdir(parents=True, exist_ok=True)
    for old in BASE.glob("*.yaml"):
        old.unlink()
    for name, content in build(helm_bin).items():
        (BASE / name).write_text(content)


if __name__ == "__main__":
    from tests.support.kube import tools_dir

    write(Path(sys.argv[1]) if len(sys.argv) > 1 else tools_dir() / "bin" / "helm")
