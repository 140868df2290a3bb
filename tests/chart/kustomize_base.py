"""Writes k8s/base from the Helm chart, so the plain manifests never drift from it.

    .venv/bin/python -m tests.chart.kustomize_base [path/to/helm]

The base is the chart rendered for release "herwa" in namespace "herwa" with the Kubernetes
1.25+ API versions, secrets from an existing Secret named "herwa" (create it yourself; keys in
the comment in k8s/base/kustomization.yaml), Helm's own labels dropped, and what only Helm can
do changed for a plain `kubectl apply -k`:

* the migrate Job is named after its image ("herwa-migrate-<tag>") instead of the release
  revision: a Job's pod template is immutable, so the next version's Job must be a new object,
  not an update; a finished Job is removed after a day (ttlSecondsAfterFinished);
* the `helm test` pod is left out, and so is the reshard Job that records `bot.shardCount` as
  the fleet's target shard count: its count is fixed in its pod template, so an overlay that
  changes the StatefulSet's count would leave it setting the old one back (or, under the same
  image, be refused as an immutable change). Without Helm, run `herwa reshard --shard-count N`
  before applying a changed shard count (README "Changing the shard count");
* the operator runs without a peering object (standalone, one replica): the peering object is
  a custom resource whose CRD the same first `kubectl apply` would only be creating, which
  kubectl refuses ("ensure CRDs are installed first").

tests/chart/test_kustomize.py fails when the committed base differs from this.
"""

from __future__ import annotations

import re
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


MIGRATE_TTL_SECONDS = 86400
PEERING_KINDS = ("ClusterKopfPeering", "KopfPeering")


def _image_slug(image: str) -> str:
    """ "ghcr.io/herwa/herwa:0.1.0" → "0-1-0"; a digest → its first 12 hex digits."""
    if "@" in image:
        return image.rsplit(":", 1)[1][:12]
    return re.sub(r"[^a-z0-9]+", "-", image.rsplit(":", 1)[1].lower()).strip("-")[:20]


def _for_kubectl(doc: dict[str, Any]) -> dict[str, Any] | None:
    """What only Helm can do, changed for a plain `kubectl apply` (see the module docstring)."""
    annotations = doc["metadata"].get("annotations", {})
    if annotations.get("helm.sh/hook") == "test" or doc["kind"] in PEERING_KINDS:
        return None
    component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    if doc["kind"] == "Job" and component == "reshard":
        return None
    if doc["kind"] == "Job" and component == "migrate":
        image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
        name = doc["metadata"]["name"].rsplit("-", 1)[0]  # "-<revision>": Helm's, not ours
        doc["metadata"]["name"] = f"{name}-{_image_slug(image)}"
        doc["spec"]["ttlSecondsAfterFinished"] = MIGRATE_TTL_SECONDS
    if doc["kind"] == "Deployment":
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["env"] = [
                e for e in container.get("env", []) if e["name"] != "HERWA_OPERATOR_PEERING_NAME"
            ]
    return doc


def build(helm_bin: Path, *extra: str) -> dict[str, str]:
    """File name → content of every file in k8s/base."""
    files: dict[str, str] = {}
    for rendered in render(helm_bin, *ARGS, *extra, kube_version="1.25.0"):
        kept = _for_kubectl(rendered)
        if kept is None:
            continue
        doc = _clean(kept)
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
            "# clickhouse-readonly-url, etl-pull-postgres-dsn); k8s/kustomization.yaml adds the\n"
            "# CRDs.\n"
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
