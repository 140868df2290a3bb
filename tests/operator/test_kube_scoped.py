"""operator.watchNamespace against a real kube-apiserver: the chart's namespaced RBAC alone.

A module of its own: test_kube.py's cluster-wide operator (a module fixture) must be gone, or it
would reconcile the namespace this operator must leave alone.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from herwa.devstack import Endpoints
from tests.operator.test_kube import (
    CHART,
    DRIFT,
    EXAMPLES,
    guild_id,
    kube_stores,
    manifest,
    render_chart_operator_files,
    running_operator,
    wait_for,
)
from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube


def test_watch_namespace_works_with_the_namespaced_rbac_alone(
    kube_cluster: KubeCluster, services: Endpoints, tmp_path: Path
) -> None:
    """operator.watchNamespace: the chart's Role, RoleBinding and KopfPeering in that namespace
    are all the operator has (no cluster-wide rule of any release applies to this identity),
    and it reconciles that namespace's GuildSubscriptions, and only those."""
    release, op_ns = "scoped", f"op-{uuid.uuid4().hex[:8]}"
    watched = kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    other = kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        kube_cluster.kubectl("apply", "-f", str(crd), check=True)
    kube_cluster.kubectl(
        "wait", "--for", "condition=established", "--timeout=60s",
        "crd/kopfpeerings.kopf.dev", check=True,
    )  # fmt: skip
    kube_cluster.create_namespace(op_ns)
    rendered = render_chart_operator_files(
        kube_cluster,
        tmp_path,
        "--set",
        f"operator.watchNamespace={watched}",
        release=release,
        namespace=op_ns,
    )
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "KopfPeering"}
    kube_cluster.kubectl("apply", "-f", "-", input=rendered, check=True)
    sa = f"system:serviceaccount:{op_ns}:{release}-operator"
    sa_kubeconfig = kube_cluster.kubeconfig_for(sa)

    def can(*args: str) -> bool:
        return kube_cluster.kubectl("auth", "can-i", *args, "--as", sa).stdout.strip() == "yes"

    assert can("watch", "guildsubscriptions.herwa.dev", "-n", watched)
    assert not can("watch", "guildsubscriptions.herwa.dev", "-n", other)
    assert not can("watch", "guildsubscriptions.herwa.dev", "--all-namespaces")
    assert not can("list", "clusterkopfpeerings.kopf.dev")
    peering = f"{op_ns}-{release}-operator"
    guild, elsewhere = guild_id(), guild_id()
    with (
        kube_stores(services) as (dsn, redis_url),
        running_operator(
            kube_cluster,
            tmp_path,
            dsn,
            redis_url,
            sa_kubeconfig,
            name="scoped",
            peering=peering,
            watch_namespace=watched,
        ) as op,
    ):
        wait_for(
            "registered in the KopfPeering",
            lambda: json.loads(
                op.kubectl("get", "kopfpeering", peering, "-n", watched, "-o", "json").stdout
            ).get("status"),
            timeout=30,
        )
        for ns, gid in ((watched, guild), (other, elsewhere)):
            doc = manifest(EXAMPLES / "pro.yaml", ns, "sub", guildId=gid)
            assert op.kubectl("apply", "-f", "-", input=doc).returncode == 0
        wait_for(
            "Ready in the watched namespace",
            lambda: (op.condition(watched, "sub", "Ready") or {}).get("status") == "True",
        )
        assert (op.row(guild) or {}).get("tier") == "pro"
        time.sleep(DRIFT * 2)  # the drift timer has run: the other namespace stays untouched
        assert op.get(other, "sub") is not None
        assert not (op.get(other, "sub") or {}).get("status")
        assert op.row(elsewhere) is None
