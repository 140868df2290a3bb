"""`helm install` / `upgrade` / `uninstall` into a real kube-apiserver (1.20.2).

The server has no node, so nothing runs (tests/cluster runs it): these tests check that helm
creates the release's objects in the versions 1.20 serves, one migrate Job per revision, and
removes everything on uninstall. Prometheus Operator CRDs are stood in by minimal CRDs of the
same group and kinds.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.chart._chart import ALL_ON, CHART, STORES
from tests.support.kube import KubeCluster
from tests.support.prometheus import install_monitoring_crds

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster: KubeCluster) -> None:
    install_monitoring_crds(kube_cluster)


def _get(cluster: KubeCluster, ns: str, *what: str) -> dict[str, Any]:
    out = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _exists(cluster: KubeCluster, ns: str, kind: str, name: str) -> bool:
    return cluster.kubectl("get", kind, name, "-n", ns).returncode == 0


def _install(
    cluster: KubeCluster, ns: str, release: str, *args: str, verb: str = "install"
) -> subprocess.CompletedProcess[str]:
    result = cluster.helm(verb, release, CHART, "--namespace", ns, "--timeout", "120s", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    # This revision's migrate Job, and no other: the previous revision's is deleted.
    revision = json.loads(cluster.helm("status", release, "-n", ns, "-o", "json").stdout)
    jobs = _get(cluster, ns, "jobs", "-l", "app.kubernetes.io/component=migrate")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [
        f"{release}-herwa-migrate-{revision['version']}"
    ]
    return result


def test_install_without_store_settings_fails_at_once(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """Not after Helm's timeout with pods in CreateContainerConfigError: at render time,
    naming the values, with nothing created."""
    ns, release = kube_namespace, f"n{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    result = kube_cluster.helm("install", release, CHART, "--namespace", ns, "--timeout", "300s")
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "secrets.postgresDsn, secrets.redisUrl, secrets.clickhouseUrl, secrets.discordToken" in (
        result.stderr
    )
    assert kube_cluster.helm("status", release, "-n", ns).returncode != 0
    assert not _exists(kube_cluster, ns, "job", f"{release}-herwa-migrate-1")
    # The GitOps opt-out installs, and NOTES still says what is missing.
    skipped = _install(kube_cluster, ns, release, "--set", "secrets.skipRenderCheck=true")
    assert (
        "WARNING: secrets.postgresDsn, secrets.redisUrl, secrets.clickhouseUrl, "
        "secrets.discordToken not set" in skipped.stdout
    )


def test_same_release_name_in_two_namespaces(kube_cluster: KubeCluster) -> None:
    release = f"s{uuid.uuid4().hex[:6]}"
    namespaces = [kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}") for _ in range(2)]
    for ns in namespaces:
        _install(kube_cluster, ns, release, *STORES)
    for ns in namespaces:
        binding = _get(kube_cluster, "default", "clusterrolebinding", f"{ns}-{release}-operator")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{release}-operator", "namespace": ns}
        ]
        assert _exists(kube_cluster, "default", "clusterkopfpeering", f"{ns}-{release}-operator")


def test_install_defaults_into_kubernetes_1_20(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    ns, release = kube_namespace, f"d{uuid.uuid4().hex[:6]}"
    result = _install(kube_cluster, ns, release, *STORES)
    assert "WARNING" not in result.stdout
    full = f"{release}-herwa"
    sts = _get(kube_cluster, ns, "statefulset", f"{full}-bot")
    assert sts["spec"]["replicas"] == 2
    assert (
        sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
        == "/readyz"
    )
    cron = _get(kube_cluster, ns, "cronjobs.v1beta1.batch", f"{full}-etl")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert _get(kube_cluster, ns, "poddisruptionbudgets.v1beta1.policy", f"{full}-bot")
    for kind, name in [
        ("service", f"{full}-bot"),
        ("deployment", f"{full}-operator"),
        ("networkpolicy", full),
        ("configmap", f"{full}-platform"),
        ("serviceaccount", f"{release}-operator"),
        ("serviceaccount", full),
    ]:
        assert _exists(kube_cluster, ns, kind, name), f"{kind}/{name} missing"
    # One Secret, the release's: nothing holds a second copy of the connection strings.
    secrets = _get(kube_cluster, ns, "secrets", "-l", f"app.kubernetes.io/instance={release}")
    assert [s["metadata"]["name"] for s in secrets["items"]] == [full]
    # The CRDs from crds/ are served.
    crd = kube_cluster.kubectl(
        "get", "crd", "guildsubscriptions.herwa.dev", "-o", "json", check=True
    )
    assert json.loads(crd.stdout)["spec"]["names"]["kind"] == "GuildSubscription"
    # The operator's ServiceAccount can do its job, and no more.
    sa = f"system:serviceaccount:{ns}:{release}-operator"

    def can(*args: str) -> str:
        return kube_cluster.kubectl("auth", "can-i", "--as", sa, *args).stdout.strip()

    assert can("watch", "guildsubscriptions.herwa.dev", "--all-namespaces") == "yes"
    assert can("patch", "guildsubscriptions.herwa.dev/status", "-n", ns) == "yes"
    assert can("get", "secrets", "-n", ns) == "no"
    assert can("create", "pods", "-n", ns) == "no"
    uninstall = kube_cluster.helm("uninstall", release, "--namespace", ns, "--wait=false")
    assert uninstall.returncode == 0, uninstall.stderr
    assert not _exists(kube_cluster, ns, "statefulset", f"{full}-bot")
    assert not _exists(kube_cluster, ns, "job", f"{full}-migrate-1")
    assert not _exists(kube_cluster, ns, "secret", full)


def test_install_and_upgrade_with_monitoring(
    kube_cluster: KubeCluster, kube_namespace: str, monitoring_crds: None, tmp_path: Path
) -> None:
    ns, release = kube_namespace, f"m{uuid.uuid4().hex[:6]}"
    result = _install(kube_cluster, ns, release, *ALL_ON)
    assert "WARNING" not in result.stdout
    full = f"{release}-herwa"
    rule = _get(kube_cluster, ns, "prometheusrules.monitoring.coreos.com", full)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "HerwaShardDisconnected" in alerts
    monitors = _get(kube_cluster, ns, "servicemonitors.monitoring.coreos.com")["items"]
    assert sorted(m["metadata"]["name"] for m in monitors) == [f"{full}-bot", f"{full}-operator"]
    dashboards = _get(kube_cluster, ns, "configmaps", "-l", "grafana_dashboard=1")["items"]
    assert len(dashboards) >= 2
    secret = _get(kube_cluster, ns, "secret", full)
    assert set(secret["data"]) == {"discord-token", "postgres-dsn", "redis-url", "clickhouse-url"}
    # More pods for more shards: an upgrade runs the migration again, as a new Job.
    _install(kube_cluster, ns, release, *ALL_ON, "--set", "bot.replicas=3", verb="upgrade")
    assert _get(kube_cluster, ns, "statefulset", f"{full}-bot")["spec"]["replicas"] == 3
    history = kube_cluster.helm("history", release, "-n", ns, "-o", "json", check=True)
    assert [h["status"] for h in json.loads(history.stdout)] == ["superseded", "deployed"]
