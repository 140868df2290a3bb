"""The operator against a real kube-apiserver + etcd, as its own ServiceAccount.

The operator runs as a subprocess (`herwa operator`) with a bound token of the ServiceAccount
that the chart's templates/operator-rbac.yaml creates, bound to exactly that ClusterRole — a rule
missing there makes these tests fail. CRDs come from charts/herwa/crds/. Postgres and Redis are
the real test servers; the drift timer runs every DRIFT seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import redis
import yaml

from herwa.devstack import Endpoints, clickhouse_query, postgres_execute, run_sync
from herwa.schema import migrate
from tests.support.kube import KubeCluster, free_port
from tests.support.services import with_path

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "herwa"
EXAMPLES = REPO / "k8s" / "examples"
RELEASE, OP_NAMESPACE = "herwa", "herwa-system"
SA = f"system:serviceaccount:{OP_NAMESPACE}:{RELEASE}-operator"
# The chart names cluster-scoped objects "<namespace>-<release>-operator".
PEERING = f"{OP_NAMESPACE}-{RELEASE}-operator"
DRIFT = 2.0
# Stated bound: kubectl apply/patch/delete → Postgres, Redis and status follow within this.
BOUND = 15.0
REDIS_DB = 2
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = BOUND) -> tuple[T, float]:
    """Polls ``probe`` until it returns something truthy; returns it and the seconds it took."""
    start = time.monotonic()
    while True:
        value = probe()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Operator:
    cluster: KubeCluster
    proc: subprocess.Popen[bytes]
    log: Path
    postgres_dsn: str
    redis: redis.Redis
    metrics_url: str
    sa_kubeconfig: Path
    redis_url: str
    workdir: Path

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input)

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        res = self.kubectl("get", "guildsubscription", name, "-n", ns, "-o", "json")
        return json.loads(res.stdout) if res.returncode == 0 else None

    def condition(self, ns: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(ns, name) or {}
        for cond in obj.get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None

    def row(self, guild: str) -> dict[str, Any] | None:
        async def fetch() -> str | None:
            conn = await asyncpg.connect(self.postgres_dsn)
            try:
                raw: str | None = await conn.fetchval(
                    "SELECT row_to_json(e)::text FROM (SELECT tier, features, generation, "
                    "source_name FROM entitlements WHERE guild_id = $1) e",
                    int(guild),
                )
                return raw
            finally:
                await conn.close()

        raw = run_sync(fetch())
        return dict(json.loads(raw)) if raw else None

    def cache(self, guild: str) -> dict[str, Any] | None:
        raw = self.redis.get(f"herwa:cmdcache:{guild}")
        return json.loads(raw) if raw else None

    def metric(self, name: str, **labels: str) -> float:
        body = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()  # noqa: S310
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in body.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


def guild_id() -> str:
    return str(random.randint(10**17, 10**18 - 1))


def manifest(example: Path, ns: str, name: str, **spec: Any) -> str:
    doc = yaml.safe_load(example.read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    doc["spec"].update(spec)
    return json.dumps(doc)


@contextlib.contextmanager
def kube_stores(services: Endpoints) -> Iterator[tuple[str, str]]:
    name = f"herwa_kube_{uuid.uuid4().hex[:10]}"
    postgres_execute(services.postgres_dsn, f'CREATE DATABASE "{name}"')
    clickhouse_query(services.clickhouse_url, f"CREATE DATABASE {name}", database="")
    dsn = with_path(services.postgres_dsn, name)
    asyncio.run(migrate(dsn, with_path(services.clickhouse_url, name)))
    try:
        yield dsn, with_path(services.redis_url, str(REDIS_DB))
    finally:
        postgres_execute(services.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clickhouse_query(
            services.clickhouse_url, f"DROP DATABASE IF EXISTS {name} SYNC", database=""
        )


def render_chart_operator_files(
    cluster: KubeCluster,
    workdir: Path,
    *values: str,
    release: str = RELEASE,
    namespace: str = OP_NAMESPACE,
) -> str:
    """The chart's operator templates exactly as shipped, rendered by helm (defaults + values)."""
    res = cluster.helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "secrets.existingSecret=unused",
        *values,
        "--show-only",
        "templates/operator-rbac.yaml",
        "--show-only",
        "templates/operator-peering.yaml",
        check=True,
    )
    return res.stdout


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, services: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    work = tmp_path_factory.mktemp("operator")
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        kube_cluster.kubectl("apply", "-f", str(crd), check=True)
    kube_cluster.kubectl(
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/guildsubscriptions.herwa.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        check=True,
    )
    kube_cluster.create_namespace(OP_NAMESPACE)
    kube_cluster.kubectl(
        "apply", "-f", "-", input=render_chart_operator_files(kube_cluster, work), check=True
    )
    sa_kubeconfig = kube_cluster.kubeconfig_for(SA)
    with (
        kube_stores(services) as (dsn, redis_url),
        running_operator(kube_cluster, work, dsn, redis_url, sa_kubeconfig) as op,
    ):
        yield op


@contextlib.contextmanager
def running_operator(
    kube_cluster: KubeCluster,
    work: Path,
    dsn: str,
    redis_url: str,
    sa_kubeconfig: Path,
    name: str = "operator",
    peering: str = PEERING,
    watch_namespace: str | None = None,
) -> Iterator[Operator]:
    rclient = redis.Redis.from_url(redis_url)
    rclient.flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERWA_", "KUBE"))}
    env.update(
        KUBECONFIG=str(sa_kubeconfig),
        HERWA_POSTGRES_DSN=dsn,
        HERWA_REDIS_URL=redis_url,
        HERWA_OPERATOR_PLATFORM_FILE=str(REPO / "herwa" / "platform.yaml"),
        HERWA_OPERATOR_DRIFT_CHECK_SECONDS=str(DRIFT),
        HERWA_OPERATOR_PEERING_NAME=peering,
        HERWA_TELEMETRY_HOST="127.0.0.1",
        HERWA_TELEMETRY_PORT=str(port),
        HERWA_TELEMETRY_LOG_FORMAT="console",
        OTEL_SDK_DISABLED="true",
    )
    if watch_namespace:
        env["HERWA_OPERATOR_NAMESPACE"] = watch_namespace
    log = work / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "herwa.cli", "operator"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    op = Operator(
        kube_cluster,
        proc,
        log,
        dsn,
        rclient,
        f"http://127.0.0.1:{port}/metrics",
        sa_kubeconfig,
        redis_url,
        work,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"operator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_for("operator /healthz", ready, timeout=60)
        yield op
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rclient.close()
    text = log.read_text(errors="replace")
    # Any RBAC refusal the operator met is a missing rule, even if the tests passed. A status
    # 403 stands alone: inside a longer number (a timestamp's microseconds) it is not one.
    refusal = re.search(r"(?<![\d.])403(?!\d)|forbidden", text, re.IGNORECASE)
    assert refusal is None, text[-4000:]


def test_apply_patch_delete_follow_into_postgres_redis_and_status(
    operator: Operator, kube_namespace: str
) -> None:
    ns, guild = kube_namespace, guild_id()
    started = time.monotonic()
    res = operator.kubectl(
        "apply", "-f", "-", input=manifest(EXAMPLES / "pro.yaml", ns, "sub", guildId=guild)
    )
    assert res.returncode == 0, res.stderr
    ready, took = wait_for(
        "Ready=True", lambda: (operator.condition(ns, "sub", "Ready") or {}).get("status") == "True"
    )
    print(f"apply → Ready: {took:.2f} s")
    row = operator.row(guild)
    assert row is not None
    assert row["tier"] == "pro"
    cache = operator.cache(guild)
    assert cache is not None
    assert cache["state"] == "active"
    assert "growth" in cache["commands"]
    obj = operator.get(ns, "sub")
    assert obj is not None
    assert obj["status"]["observedGeneration"] == 1
    assert "herwa.dev/revoke-entitlement" in obj["metadata"]["finalizers"]
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {
        "Ready": "True",
        "EntitlementSynced": "True",
        "CommandCacheSynced": "True",
        "Conflict": "False",
    }
    table = operator.kubectl("get", "gsub", "sub", "-n", ns).stdout
    assert table.split()[:6] == ["NAME", "GUILD", "TIER", "READY", "EXPIRES", "AGE"]
    assert table.split()[6:10] == ["sub", guild, "pro", "True"]

    res = operator.kubectl(
        "patch",
        "gsub",
        "sub",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"tier": "enterprise", "featureOverrides": {"export": False}}}),
    )
    assert res.returncode == 0, res.stderr
    _, took = wait_for(
        "tier follows the patch",
        lambda: (
            (operator.row(guild) or {}).get("tier") == "enterprise"
            and (operator.get(ns, "sub") or {}).get("status", {}).get("observedGeneration") == 2
        ),
    )
    print(f"patch → Postgres + status: {took:.2f} s")
    assert "export" not in (operator.cache(guild) or {"commands": ["export"]})["commands"]
    assert "retention" in (operator.cache(guild) or {})["commands"]

    events = operator.kubectl("get", "events", "-n", ns, "-o", "json")
    reasons = {
        e["reason"]
        for e in json.loads(events.stdout)["items"]
        if e["involvedObject"]["name"] == "sub"
    }
    assert "Active" in reasons

    res = operator.kubectl("delete", "gsub", "sub", "-n", ns, "--wait=false")
    assert res.returncode == 0, res.stderr
    # Deleting the subscription leaves the guild on the platform's default tier, not on nothing.
    _, took = wait_for(
        "revoked and back on the default tier",
        lambda: (
            operator.get(ns, "sub") is None
            and operator.row(guild) is None
            and (operator.cache(guild) or {}).get("tier") == "free"
        ),
    )
    print(
        f"delete → revoked + finalizer released: {took:.2f} s "
        f"(whole lifecycle {time.monotonic() - started:.1f} s)"
    )
    assert ready
    fallback = operator.cache(guild)
    assert fallback is not None
    assert fallback["state"] == "active"
    assert "overview" in fallback["commands"]
    assert "growth" not in fallback["commands"]
    assert fallback["quotas"]["queries_per_month"] == 1000
    assert 0 < operator.redis.ttl(f"herwa:cmdcache:{guild}") <= 300
    events = operator.kubectl("get", "events", "-n", ns, "-o", "json")
    revoked = [
        e["message"]
        for e in json.loads(events.stdout)["items"]
        if e["involvedObject"]["name"] == "sub" and e["reason"] == "Revoked"
    ]
    assert revoked == [
        f"entitlement removed for guild {guild}; it falls back to the default tier free"
    ]


@pytest.mark.parametrize(
    "example", sorted(p.name for p in (EXAMPLES / "invalid").glob("rejected-*.yaml"))
)
def test_api_server_rejects_what_the_schema_expresses(
    operator: Operator, kube_namespace: str, example: str
) -> None:
    res = operator.kubectl("apply", "-n", kube_namespace, "-f", str(EXAMPLES / "invalid" / example))
    assert res.returncode != 0
    assert "spec." in res.stderr
    assert "Invalid value" in res.stderr or "must be" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("example", "reason"),
    [
        ("status-unknown-tier.yaml", "UnknownTier"),
        ("status-unknown-feature.yaml", "InvalidSpec"),
    ],
)
def test_what_the_schema_cannot_express_is_reported_in_status(
    operator: Operator, kube_namespace: str, example: str, reason: str
) -> None:
    guild = guild_id()
    doc = manifest(EXAMPLES / "invalid" / example, kube_namespace, "bad", guildId=guild)
    assert operator.kubectl("apply", "-f", "-", input=doc).returncode == 0
    cond, took = wait_for(
        reason,
        lambda: (
            (c := operator.condition(kube_namespace, "bad", "Ready"))
            and c["reason"] == reason
            and c
        ),
    )
    assert cond["status"] == "False"
    assert operator.row(guild) is None
    print(f"apply → {reason} in status: {took:.2f} s")


def test_drift_timer_restores_a_deleted_cache_key(operator: Operator, kube_namespace: str) -> None:
    guild = guild_id()
    operator.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(EXAMPLES / "enterprise-overrides.yaml", kube_namespace, "e", guildId=guild),
    )
    original, _ = wait_for("cache written", lambda: operator.cache(guild))
    before = operator.metric("herwa_operator_drift_repairs_total", store="redis")
    operator.redis.delete(f"herwa:cmdcache:{guild}")
    restored, took = wait_for(
        "cache restored", lambda: operator.cache(guild), timeout=DRIFT * 3 + 5
    )
    print(f"deleted Redis key restored after {took:.2f} s (drift timer every {DRIFT} s)")
    assert restored == original
    wait_for(
        "drift metric",
        lambda: operator.metric("herwa_operator_drift_repairs_total", store="redis") > before,
        timeout=5,
    )


def test_second_subscription_for_a_guild_is_a_conflict(
    operator: Operator, kube_cluster: KubeCluster
) -> None:
    guild = guild_id()
    ns_a = kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    ns_b = kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    operator.kubectl(
        "apply", "-f", "-", input=manifest(EXAMPLES / "pro.yaml", ns_a, "first", guildId=guild)
    )
    wait_for(
        "first Ready",
        lambda: (operator.condition(ns_a, "first", "Ready") or {}).get("status") == "True",
    )
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    operator.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(EXAMPLES / "enterprise-overrides.yaml", ns_b, "second", guildId=guild),
    )
    cond, _ = wait_for(
        "Conflict",
        lambda: (
            (c := operator.condition(ns_b, "second", "Conflict")) and c["status"] == "True" and c
        ),
    )
    assert f"{ns_a}/first" in cond["message"]
    assert (operator.row(guild) or {}).get("tier") == "pro"
    # The first goes away: the second takes over on its next timer tick.
    operator.kubectl("delete", "gsub", "first", "-n", ns_a)
    _, took = wait_for(
        "takeover",
        lambda: (operator.row(guild) or {}).get("tier") == "enterprise",
        timeout=DRIFT * 3 + 5,
    )
    print(f"conflicting subscription took over {took:.2f} s after the first was deleted")


def test_service_account_has_only_what_the_operator_needs(operator: Operator) -> None:
    def can(*args: str) -> bool:
        res = operator.kubectl("auth", "can-i", *args, "--as", SA)
        return res.stdout.strip() == "yes"

    assert can("patch", "guildsubscriptions.herwa.dev", "--all-namespaces")
    assert can("patch", "guildsubscriptions.herwa.dev", "--subresource", "status", "-A")
    assert can("create", "events", "-n", "anywhere")
    assert not can("delete", "guildsubscriptions.herwa.dev", "--all-namespaces")
    assert not can("create", "guildsubscriptions.herwa.dev", "-n", "default")
    assert not can("get", "secrets", "--all-namespaces")
    assert not can("get", "configmaps", "-n", OP_NAMESPACE)
    assert not can("list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can("patch", "clusterkopfpeerings.kopf.dev/someone-else")
    # And the operator really is that ServiceAccount, not an admin.
    whoami = operator.cluster.kubectl(
        "auth", "can-i", "get", "secrets", "-A", kubeconfig=operator.sa_kubeconfig
    )
    assert whoami.stdout.strip() == "no"


def _reconciles(op: Operator) -> float:
    body = urllib.request.urlopen(op.metrics_url, timeout=5).read().decode()  # noqa: S310
    return sum(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith("herwa_operator_reconciles_total{")
    )


def test_second_replica_is_paused_by_peering(operator: Operator, kube_namespace: str) -> None:
    guild = guild_id()
    operator.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(EXAMPLES / "pro.yaml", kube_namespace, "peered", guildId=guild),
    )
    wait_for(
        "Ready",
        lambda: (
            (operator.condition(kube_namespace, "peered", "Ready") or {}).get("status") == "True"
        ),
    )
    with running_operator(
        operator.cluster,
        operator.workdir,
        operator.postgres_dsn,
        operator.redis_url,
        operator.sa_kubeconfig,
        name="replica",
    ) as second:
        # kopf starts a peered replica paused and resumes it only when no peer has a higher
        # priority; the old one pauses if the new one outranks it. Either way: one works.
        wait_for(
            "replica registered in the peering",
            lambda: (
                len(
                    json.loads(
                        operator.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json").stdout
                    ).get("status", {})
                )
                >= 2
            ),
            timeout=20,
        )
        time.sleep(2)  # let a paused one stop its watches
        before = (_reconciles(operator), _reconciles(second))
        time.sleep(DRIFT * 3)
        after = (_reconciles(operator), _reconciles(second))
        grew = [b > a for a, b in zip(before, after, strict=True)]
        # Exactly one replica keeps reconciling (the drift timer); the other is idle.
        assert grew.count(True) == 1, (before, after)
