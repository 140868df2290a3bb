"""A real Prometheus (Debian's, from ``scripts/k8s-tools``) that scrapes a cluster's pods the
way the chart's PodMonitor says and evaluates the chart's PrometheusRule, as the Prometheus
Operator would configure it.

Debian builds Prometheus without Kubernetes service discovery (its client libraries are not
packaged), so :class:`PodDiscovery` stands in for ``kubernetes_sd_configs`` with role ``pod``:
it lists the pods through the API server every second and writes them, with the same
``__meta_kubernetes_*`` labels that discovery gives (one target per container port), as a file
that Prometheus's file discovery watches. The PodMonitor's relabelling then applies unchanged.

The API server has no Prometheus Operator, so the tests install minimal CustomResourceDefinitions
for its three kinds (:data:`MONITORING_CRDS`, schemaless), let Helm create the chart's objects,
read them back from the API server and translate them here: a PodMonitor becomes a scrape job with
Kubernetes pod discovery against the API server, keeping the pods its selector and port name
match and labelling them ``namespace``, ``pod``, ``container`` and ``endpoint``; a
PrometheusRule's groups become a rule file.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.kube import KubeCluster, free_port

MONITORING_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for plural, kind in (
        ("podmonitors", "PodMonitor"),
        ("servicemonitors", "ServiceMonitor"),
        ("prometheusrules", "PrometheusRule"),
    )
]


def install_monitoring_crds(cluster: KubeCluster) -> None:
    """Creates :data:`MONITORING_CRDS` and waits until the API server serves them."""
    crds = {"apiVersion": "v1", "kind": "List", "items": MONITORING_CRDS}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crds), check=True)
    names = [f"crd/{crd['metadata']['name']}" for crd in MONITORING_CRDS]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, check=True)


def _label(name: str) -> str:
    """A Kubernetes label name as Prometheus's discovery meta label spells it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_monitor_job(monitor: dict[str, Any], discovered: Path) -> list[dict[str, Any]]:
    """The scrape jobs of one PodMonitor (one per endpoint), as the Prometheus Operator makes."""
    spec, meta = monitor["spec"], monitor["metadata"]
    namespaces = spec.get("namespaceSelector", {}).get("matchNames") or [meta["namespace"]]
    keep: list[dict[str, Any]] = []
    selector = spec.get("selector", {})
    for key, value in selector.get("matchLabels", {}).items():
        keep.append(
            {
                "action": "keep",
                "source_labels": [f"__meta_kubernetes_pod_label_{_label(key)}"],
                "regex": re.escape(str(value)),
            }
        )
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] != "In":
            raise NotImplementedError(f"matchExpressions operator {expr['operator']}")
        keep.append(
            {
                "action": "keep",
                "source_labels": [f"__meta_kubernetes_pod_label_{_label(expr['key'])}"],
                "regex": "|".join(re.escape(v) for v in expr["values"]),
            }
        )
    jobs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        relabel = [
            *keep,
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": re.escape(endpoint["port"]),
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ]
        jobs.append(
            {
                "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": endpoint.get("interval", "30s"),
                "scrape_timeout": endpoint.get("scrapeTimeout", "10s"),
                "file_sd_configs": [{"files": [str(discovered)], "refresh_interval": "5s"}],
                "relabel_configs": [
                    {
                        "action": "keep",
                        "source_labels": ["__meta_kubernetes_namespace"],
                        "regex": "|".join(re.escape(n) for n in namespaces),
                    },
                    *relabel,
                ],
            }
        )
    return jobs


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Target groups for ``pods`` as Kubernetes discovery (role pod) makes them: one per
    declared container port of every pod that has an IP, with its meta labels."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        common = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_ready": str(ready).lower(),
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
        }
        for key, value in meta.get("labels", {}).items():
            common[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
            common[f"__meta_kubernetes_pod_labelpresent_{_label(key)}"] = "true"
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                groups.append(
                    {
                        "targets": [f"{ip}:{port['containerPort']}"],
                        "labels": {
                            **common,
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(
                                port["containerPort"]
                            ),
                        },
                    }
                )
    return groups


class PodDiscovery:
    """Keeps ``path`` holding the cluster's pods as discovery targets until :meth:`stop`."""

    def __init__(self, list_pods: Callable[[], list[dict[str, Any]]], path: Path) -> None:
        self._list_pods = list_pods
        self.path = path
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pod_targets(self._list_pods())))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # the API server may be busy for a moment
                self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Prometheus:
    """A running Prometheus; :meth:`query` and :meth:`alerts` read its HTTP API."""

    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path
    jobs: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        binary: Path,
        workdir: Path,
        scrape_jobs: list[dict[str, Any]],
        rule_groups: list[dict[str, Any]],
        evaluation_interval: str = "5s",
    ) -> Prometheus:
        workdir.mkdir(parents=True, exist_ok=True)
        rules = workdir / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule_groups}))
        config = workdir / "prometheus.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"evaluation_interval": evaluation_interval},
                    "rule_files": [str(rules)],
                    "scrape_configs": scrape_jobs,
                }
            )
        )
        port = free_port()
        log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - owned by the process
        try:
            proc = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        prom = cls(proc, f"http://127.0.0.1:{port}", workdir, [j["job_name"] for j in scrape_jobs])
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return prom
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                prom.stop()
                tail = (workdir / "prometheus.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"prometheus did not start:\n{tail}")
            time.sleep(0.2)

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:  # noqa: S310
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``promql`` gives now."""
        data = self._get("/api/v1/query", query=promql)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", state="active")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts() if a["state"] == "firing"}

    def rule_health(self) -> list[str]:
        """Rules whose last evaluation failed (a PromQL error), as ``name: error``."""
        bad = []
        for group in self._get("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                if rule.get("health") == "err":
                    bad.append(f"{rule['name']}: {rule.get('lastError')}")
        return bad

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
