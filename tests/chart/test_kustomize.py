"""The kustomize base: generated from the chart, builds with kubectl's kustomize, validates."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart._chart import CHART, ROOT
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


def _apply(cluster: KubeCluster, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )


def _served_on_1_20(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if (d["apiVersion"], d["kind"]) not in NOT_ON_1_20]


@pytest.mark.kube
def test_first_apply_on_an_empty_cluster_succeeds(
    kube_tools: KubeTools, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`kubectl apply -k k8s/` once, on a cluster that has never seen the CRDs: no custom
    resource of a CRD that this same apply creates (kubectl refuses those). A server of its
    own, since the shared one has the CRDs already."""
    cluster = KubeCluster.start(kube_tools, tmp_path_factory.mktemp("empty-kube"))
    try:
        assert cluster.kubectl("get", "crd", "-o", "name").stdout.strip() == ""
        cluster.create_namespace("herwa")
        result = _apply(cluster, _served_on_1_20(kustomize(kube_tools)))
        assert result.returncode == 0, result.stderr
        assert "guildsubscriptions.herwa.dev created" in result.stdout
    finally:
        cluster.stop()


def _migrate_job(tools: KubeTools, *values: str) -> dict[str, Any]:
    (text,) = [t for name, t in build(tools.helm, *values).items() if name.startswith("job-")]
    job: dict[str, Any] = yaml.safe_load(text)
    return job


@pytest.mark.kube
def test_the_next_versions_migrate_job_applies(
    kube_tools: KubeTools, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """A Job's pod template is immutable: the next version's migrate Job is a new object."""
    now, upgrade = _migrate_job(kube_tools), _migrate_job(kube_tools, "--set", "image.tag=0.2.0")
    for job in (now, upgrade):
        job["metadata"]["namespace"] = kube_namespace
    assert _apply(kube_cluster, [now]).returncode == 0
    # The premise: the same name with a new image is refused.
    same_name = json.loads(json.dumps(upgrade))
    same_name["metadata"]["name"] = now["metadata"]["name"]
    refused = _apply(kube_cluster, [same_name])
    assert refused.returncode != 0
    assert "field is immutable" in refused.stderr
    result = _apply(kube_cluster, [upgrade])
    assert result.returncode == 0, result.stderr
    assert now["metadata"]["name"] == "herwa-migrate-0-1-0"
    assert upgrade["metadata"]["name"] == "herwa-migrate-0-2-0"
    assert upgrade["spec"]["ttlSecondsAfterFinished"] > 0


def _readme_crd_step() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("kubectl apply -f charts/herwa/crds")]
    return line.split()[1:]


@pytest.mark.kube
def test_readme_crd_upgrade_step_updates_installed_crds(kube_cluster: KubeCluster) -> None:
    """Helm never upgrades crds/: the README's step before `helm upgrade` does."""
    crd = "crd/guildsubscriptions.herwa.dev"
    kube_cluster.kubectl("apply", "-f", str(CHART / "crds"), check=True)
    # An older chart's CRD: without the printer columns the current one has.
    kube_cluster.kubectl(
        "patch", crd, "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/versions/0/additionalPrinterColumns"}]),
        check=True,
    )  # fmt: skip
    old = json.loads(kube_cluster.kubectl("get", crd, "-o", "json", check=True).stdout)
    assert "additionalPrinterColumns" not in old["spec"]["versions"][0]
    args = _readme_crd_step()
    result = kube_cluster.kubectl(*[str(ROOT / a) if a.startswith("charts/") else a for a in args])
    assert result.returncode == 0, result.stderr
    new = json.loads(kube_cluster.kubectl("get", crd, "-o", "json", check=True).stdout)
    shipped = yaml.safe_load((CHART / "crds" / "guildsubscription.yaml").read_text())
    assert (
        new["spec"]["versions"][0]["additionalPrinterColumns"]
        == shipped["spec"]["versions"][0]["additionalPrinterColumns"]
    )
