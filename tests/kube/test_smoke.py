"""Smoke tests of the real API server from tests/support/kube.py (needs scripts/k8s-tools)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import KubeCluster, KubeTools

pytestmark = pytest.mark.kube

GROUP = "smoke.herwa.test"


def _crd(plural: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["guildId"],
                                    "properties": {
                                        "guildId": {"type": "string", "pattern": "^[0-9]{17,20}$"},
                                        "retentionDays": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": 3650,
                                            "default": 30,
                                        },
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def _cr(kind: str, ns: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


@pytest.fixture(scope="module")
def crd(kube_cluster: KubeCluster) -> Iterator[str]:
    """A CRD applied for this module and waited on until Established; yields its kind."""
    plural, kind = "smokeguilds", "SmokeGuild"
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(_crd(plural, kind)), check=True)
    waited = kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{GROUP}"
    )
    assert waited.returncode == 0, waited.stderr
    yield kind
    kube_cluster.kubectl("delete", f"crd/{plural}.{GROUP}", "--wait=false")


def test_api_server_ready(kube_cluster: KubeCluster) -> None:
    ready = kube_cluster.kubectl("get", "--raw", "/readyz")
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.strip() == "ok"
    version = json.loads(kube_cluster.kubectl("get", "--raw", "/version", check=True).stdout)
    assert version["gitVersion"] == "v1.20.2"
    assert kube_cluster.server.startswith("https://127.0.0.1:")


def test_crd_established_and_defaults_applied(
    kube_cluster: KubeCluster, crd: str, kube_namespace: str
) -> None:
    kube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        check=True,
        input=_cr(crd, kube_namespace, "good", {"guildId": "123456789012345678"}),
    )
    got = json.loads(
        kube_cluster.kubectl(
            "get", f"{crd.lower()}.{GROUP}", "good", "-n", kube_namespace, "-o", "json", check=True
        ).stdout
    )
    assert got["spec"]["retentionDays"] == 30  # schema default applied by the server


def test_invalid_custom_resource_rejected(
    kube_cluster: KubeCluster, crd: str, kube_namespace: str
) -> None:
    # --validate=false: kubectl's own check is off, so the rejection is the server's
    bad = _cr(crd, kube_namespace, "bad", {"guildId": "not-a-snowflake", "retentionDays": 0})
    result = kube_cluster.kubectl("apply", "--validate=false", "-f", "-", input=bad)
    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert "spec.guildId" in result.stderr
    assert "spec.retentionDays" in result.stderr
    missing = kube_cluster.kubectl(
        "apply", "--validate=false", "-f", "-", input=_cr(crd, kube_namespace, "bad2", {})
    )
    assert missing.returncode != 0
    assert "spec.guildId: Required value" in missing.stderr


def test_server_side_dry_run(kube_cluster: KubeCluster, crd: str, kube_namespace: str) -> None:
    good = _cr(crd, kube_namespace, "dry", {"guildId": "123456789012345678"})
    dry = kube_cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=good)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["spec"]["retentionDays"] == 30  # defaulted, yet not stored
    gone = kube_cluster.kubectl("get", f"{crd.lower()}.{GROUP}", "dry", "-n", kube_namespace)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr
    bad = _cr(crd, kube_namespace, "dry", {"guildId": "x"})
    rejected = kube_cluster.kubectl(
        "apply", "--dry-run=server", "--validate=false", "-f", "-", input=bad
    )
    assert rejected.returncode != 0
    assert "spec.guildId" in rejected.stderr
    ssa = kube_cluster.kubectl(
        "apply", "--server-side", "--field-manager=herwa-test", "-f", "-", input=good
    )
    assert ssa.returncode == 0, ssa.stderr


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def _rbac(ns: str, subject: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": "cm-reader", "namespace": ns},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["configmaps"],
                            "verbs": ["get", "list", "watch"],
                        }
                    ],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "cm-reader", "namespace": ns},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "cm-reader",
                    },
                    "subjects": [subject],
                },
            ],
        }
    )


def test_rbac_service_account_token(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "serviceaccount", "herwa-operator", "-n", ns, check=True)
    kubeconfig = kube_cluster.kubeconfig_for(f"system:serviceaccount:{ns}:herwa-operator")
    assert "token" in json.loads(kubeconfig.read_text())["users"][0]["user"]

    def can_list() -> bool:
        return (
            kube_cluster.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig).returncode
            == 0
        )

    denied = kube_cluster.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig)
    assert denied.returncode != 0
    assert f'"system:serviceaccount:{ns}:herwa-operator" cannot list resource' in denied.stderr
    kube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        check=True,
        input=_rbac(ns, {"kind": "ServiceAccount", "name": "herwa-operator", "namespace": ns}),
    )
    assert _eventually(can_list)
    # the grant is namespaced: still denied elsewhere
    other = kube_cluster.kubectl("get", "configmaps", "-n", "default", kubeconfig=kubeconfig)
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()


def test_rbac_certificate_identity_by_group(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    group = f"herwa:viewers-{uuid.uuid4().hex[:6]}"
    kubeconfig = kube_cluster.kubeconfig_for("jane@example.test", [group])
    whoami = kube_cluster.kubectl(
        "auth", "can-i", "list", "configmaps", "-n", ns, kubeconfig=kubeconfig
    )
    assert whoami.stdout.strip() == "no"
    kube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        check=True,
        input=_rbac(ns, {"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}),
    )
    assert _eventually(
        lambda: (
            kube_cluster.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig).returncode
            == 0
        )
    )


def test_helm_install_against_server(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  answer: {{ .Values.answer | quote }}\n"
    )
    (chart / "values.yaml").write_text("answer: 42\n")
    installed = kube_cluster.helm("install", "smoke", chart, "-n", kube_namespace, "--wait=false")
    assert installed.returncode == 0, installed.stderr
    cm = json.loads(
        kube_cluster.kubectl(
            "get", "configmap", "smoke-cm", "-n", kube_namespace, "-o", "json", check=True
        ).stdout
    )
    assert cm["data"]["answer"] == "42"


def test_helm_and_promtool_run(kube_tools: KubeTools) -> None:
    helm = subprocess.run(
        [kube_tools.helm, "version", "--short"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith("v3.18.0")
    promtool = subprocess.run(
        [kube_tools.promtool, "--version"], capture_output=True, text=True, check=True
    )
    assert "promtool, version 2." in promtool.stdout + promtool.stderr


def test_service_account_identity_before_the_account_exists(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    user = f"system:serviceaccount:{ns}:herwa-late"
    stand_in = kube_cluster.kubeconfig_for(user)
    assert "client-certificate" in json.loads(stand_in.read_text())["users"][0]["user"]
    subject = {"kind": "ServiceAccount", "name": "herwa-late", "namespace": ns}
    kube_cluster.kubectl("apply", "-f", "-", check=True, input=_rbac(ns, subject))
    assert _eventually(
        lambda: kube_cluster.kubectl("get", "cm", "-n", ns, kubeconfig=stand_in).returncode == 0
    )
    kube_cluster.kubectl("create", "serviceaccount", "herwa-late", "-n", ns, check=True)
    real = kube_cluster.kubeconfig_for(user)
    assert "token" in json.loads(real.read_text())["users"][0]["user"]
    assert kube_cluster.kubectl("get", "cm", "-n", ns, kubeconfig=real).returncode == 0
