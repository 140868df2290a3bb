"""`helm install` / `upgrade` / `uninstall` into a real kube-apiserver (1.20.2).

The server has no controllers, so nothing runs: the test plays the Job controller for the
migration hook (marks the hook Job Complete through its status subresource) and checks that
helm then creates the release's objects in the versions 1.20 serves and removes the hook's own
objects. Prometheus Operator CRDs are stood in by minimal CRDs of the same group and kinds.
"""

from __future__ import annotations

import json
import subprocess
import threading
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


class HookJobController:
    """Marks the release's migration Job Complete as soon as it appears (a stand-in for the
    Job controller and a successful `herwa migrate`)."""

    def __init__(self, cluster: KubeCluster, namespace: str, job: str) -> None:
        self.cluster, self.namespace, self.job = cluster, namespace, job
        self.completed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> HookJobController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        seen: set[str] = set()
        while not self._stop.is_set():
            got = self.cluster.kubectl("get", "job", self.job, "-n", self.namespace, "-o", "json")
            if got.returncode == 0:
                job = json.loads(got.stdout)
                uid = job["metadata"]["uid"]
                if uid not in seen:
                    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    status = {
                        "status": {
                            "succeeded": 1,
                            "startTime": now,
                            "completionTime": now,
                            "conditions": [
                                {
                                    "type": "Complete",
                                    "status": "True",
                                    "lastProbeTime": now,
                                    "lastTransitionTime": now,
                                }
                            ],
                        }
                    }
                    self.cluster.kubectl(
                        "patch",
                        "job",
                        self.job,
                        "-n",
                        self.namespace,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        json.dumps(status),
                        check=True,
                    )
                    seen.add(uid)
                    self.completed += 1
            time.sleep(0.3)


def _get(cluster: KubeCluster, ns: str, *what: str) -> dict[str, Any]:
    out = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _exists(cluster: KubeCluster, ns: str, kind: str, name: str) -> bool:
    return cluster.kubectl("get", kind, name, "-n", ns).returncode == 0


def _install(
    cluster: KubeCluster, ns: str, release: str, *args: str, verb: str = "install"
) -> subprocess.CompletedProcess[str]:
    with HookJobController(cluster, ns, f"{release}-herwa-migrate") as hooks:
        result = cluster.helm(verb, release, CHART, "--namespace", ns, "--timeout", "120s", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert hooks.completed == 1, "the migration hook Job did not run exactly once"
    return result


def test_install_without_store_settings_fails_at_once(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """Not after Helm's timeout with a hook pod in CreateContainerConfigError: at render time,
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
    assert not _exists(kube_cluster, ns, "job", f"{release}-herwa-migrate")
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
    # The hook's own objects are gone once it succeeded.
    for kind in ("job", "secret", "serviceaccount"):
        assert not _exists(kube_cluster, ns, kind, f"{full}-migrate"), f"hook {kind} left behind"
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
    # More pods for more shards: an upgrade runs the pre-upgrade migration again.
    _install(kube_cluster, ns, release, *ALL_ON, "--set", "bot.replicas=3", verb="upgrade")
    assert _get(kube_cluster, ns, "statefulset", f"{full}-bot")["spec"]["replicas"] == 3
    history = kube_cluster.helm("history", release, "-n", ns, "-o", "json", check=True)
    assert [h["status"] for h in json.loads(history.stdout)] == ["superseded", "deployed"]
