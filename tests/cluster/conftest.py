"""One Helm release of Herwa on a real one-node cluster, against real stores and the simulator.

The module-scoped ``release`` installs the chart with its defaults plus what a user must give
(store secrets, the image) and what points the bots at the simulator instead of Discord; the
tests in a module then act on that one release in order, as an operator would. Every blocking
call (kubectl, helm, docker) runs in a thread: the simulator shares the tests' event loop and
must keep answering heartbeats meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.support.kube import KubeTools
from tests.support.node import KubeNode
from tests.support.prometheus import (
    PodDiscovery,
    Prometheus,
    install_monitoring_crds,
    pod_monitor_job,
)
from tests.support.services import fresh_databases

# What an operator of this node would want to know, printed at the end of the run.
FIGURES: dict[str, str] = {}

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "herwa"
NAMESPACE = "herwa"
RELEASE = "herwa"
SHARDS = 4
# Fast coordination and flushing, as in tests/bot; the defaults are for production.
FAST_ENV = {
    "HERWA_BOT_MEMBER_HEARTBEAT_SECONDS": "0.5",
    "HERWA_BOT_MEMBER_TTL_SECONDS": "3.0",
    "HERWA_BOT_IDENTIFY_WINDOW_SECONDS": "0.3",
    "HERWA_BOT_MAX_CONCURRENCY": "1",
    "HERWA_BOT_GUILD_READY_TIMEOUT_SECONDS": "0.2",
    "OTEL_SDK_DISABLED": "true",
}


@pytest.fixture(scope="module")
def databases(services: Endpoints) -> Iterator[Endpoints]:
    with fresh_databases(services) as fresh:
        yield fresh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=23,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
    )
    async with Simulator(config) as sim:
        yield sim


@dataclass
class Release:
    """The installed release and what it runs against."""

    node: KubeNode
    sim: Simulator
    stores: Endpoints  # as the tests reach them (loopback)
    image: str
    values: dict[str, Any]
    install_seconds: float = 0.0

    async def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = await asyncio.to_thread(
            self.node.cluster.kubectl, "-n", NAMESPACE, *args, input=input
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    async def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.to_thread(self.node.cluster.helm, "-n", NAMESPACE, *args)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: {proc.stderr}\n{proc.stdout}")
        return proc

    async def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(await self.kubectl("get", *args, "-o", "json"))
        return out

    async def pods(self, component: str) -> list[dict[str, Any]]:
        out = await self.get("pods", "-l", f"app.kubernetes.io/component={component}")
        return list(out["items"])

    async def upgrade(self, **sets: str) -> None:
        args = [f"{k}={v}" for k, v in sets.items()]
        values = self.values_file()
        await self.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-f",
            str(values),
            *[a for kv in args for a in ("--set", kv)],
            "--wait",
            "--wait-for-jobs",
            "--timeout",
            "5m",
        )

    def values_file(self) -> Path:
        path = self.node.workdir / "values.yaml"
        path.write_text(yaml.safe_dump(self.values))
        return path


def is_ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def release_values(node: KubeNode, stores: Endpoints, sim: Simulator, image: str) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    env = {**FAST_ENV}
    for key, value in sim.env().items():
        if key != "HERWA_DISCORD_TOKEN":
            env[key] = node.for_pods(value)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "secrets": {
            "discordToken": sim.config.token,
            "postgresDsn": node.for_pods(stores.postgres_dsn),
            "redisUrl": node.for_pods(stores.redis_url),
            "clickhouseUrl": node.for_pods(stores.clickhouse_url),
            "clickhouseReadonlyUrl": node.for_pods(stores.clickhouse_readonly_url),
            # ClickHouse runs beside Postgres, outside the node: it pulls from loopback.
            "etlPullPostgresDsn": stores.postgres_dsn,
        },
        "extraEnv": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "bot": {"replicas": 2, "shardCount": SHARDS},
        # Every minute, so that a test sees it fire on its own.
        "etl": {"schedule": "* * * * *"},
        # Scraped and evaluated by a real Prometheus (tests/support/prometheus.py); short
        # durations so that an alert can fire within a test.
        "metrics": {
            "podMonitor": {"enabled": True, "interval": "5s", "scrapeTimeout": "4s"},
            "prometheusRule": {
                "enabled": True,
                "thresholds": {
                    "shardDisconnectedFor": "10s",
                    "absentFor": "10s",
                    "etlLagSeconds": 75,
                    "etlLagFor": "10s",
                    "flushFailuresFor": "10s",
                    "reconcileErrorsFor": "10s",
                },
            },
        },
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def release(
    kube_node: KubeNode, herwa_image: str, databases: Endpoints, cluster_sim: Simulator
) -> AsyncIterator[Release]:
    values = release_values(kube_node, databases, cluster_sim, herwa_image)
    rel = Release(
        node=kube_node, sim=cluster_sim, stores=databases, image=herwa_image, values=values
    )
    # What the Prometheus Operator would have installed: its kinds, so the chart can create
    # its PodMonitor and PrometheusRule (tests/support/prometheus.py reads them back).
    await asyncio.to_thread(install_monitoring_crds, kube_node.cluster)
    # The node's controller-manager makes the namespace's default ServiceAccount itself.
    created = await asyncio.to_thread(kube_node.cluster.kubectl, "create", "namespace", NAMESPACE)
    assert created.returncode == 0, created.stderr
    t0 = time.monotonic()
    await rel.helm(
        "install",
        RELEASE,
        str(CHART),
        "-f",
        str(rel.values_file()),
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        "5m",
    )
    rel.install_seconds = time.monotonic() - t0
    FIGURES["node Ready after start"] = f"{kube_node.node_ready_seconds:.1f} s"
    FIGURES["helm install --wait (all pods Ready, migrate Job done)"] = (
        f"{rel.install_seconds:.1f} s"
    )
    FIGURES.update(await asyncio.to_thread(_memory_figures, kube_node))
    await asyncio.to_thread(kube_node.refresh_dns)
    try:
        yield rel
    finally:
        await rel.helm("uninstall", RELEASE, check=False)


@pytest.fixture(scope="module")
def prometheus(release: Release, kube_tools: KubeTools) -> Iterator[Prometheus]:
    """A real Prometheus configured from the release's PodMonitor and PrometheusRule objects,
    as the Prometheus Operator would configure it."""
    cluster = release.node.cluster
    monitors = json.loads(cluster.kubectl("get", "podmonitors", "-A", "-o", "json").stdout)
    rules = json.loads(cluster.kubectl("get", "prometheusrules", "-A", "-o", "json").stdout)
    assert monitors["items"], "the chart rendered no PodMonitor"
    assert rules["items"], "the chart rendered no PrometheusRule"
    workdir = release.node.workdir / "prometheus"
    workdir.mkdir()

    def list_pods() -> list[dict[str, Any]]:
        out = cluster.kubectl("get", "pods", "-A", "-o", "json", check=True)
        return list(json.loads(out.stdout)["items"])

    discovery = PodDiscovery(list_pods, workdir / "pods.json")
    jobs = [job for m in monitors["items"] for job in pod_monitor_job(m, discovery.path)]
    groups = [group for rule in rules["items"] for group in rule["spec"]["groups"]]
    prom = Prometheus.start(kube_tools.dir / "bin" / "prometheus", workdir, jobs, groups)
    try:
        yield prom
    finally:
        prom.stop()
        discovery.stop()


def _memory_figures(node: KubeNode) -> dict[str, str]:
    mib = 1024 * 1024
    control = node.cluster.resident_bytes()
    out = {
        "node processes RSS": f"{sum(control.values()) / mib:.0f} MiB ("
        + ", ".join(f"{k} {v / mib:.0f}" for k, v in sorted(control.items()))
        + ")"
    }
    # cgroup v1 with the cgroupfs driver: every pod's memory is charged under kubepods.
    stat = Path("/sys/fs/cgroup/memory/kubepods/memory.stat")
    if stat.exists():
        values = dict(line.split() for line in stat.read_text().splitlines())
        out["pods RSS (kubepods cgroup)"] = f"{int(values['total_rss']) / mib:.0f} MiB"
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("the one-node cluster")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
