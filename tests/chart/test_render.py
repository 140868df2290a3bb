"""The chart lints, renders and validates against the oldest and newest supported Kubernetes.

Supported: 1.25-1.37, validated offline against each end's OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors). Older servers (1.20-1.24) get capability-selected API versions,
checked here and installed for real in test_install.py.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from herwa import config
from herwa.cli import build_parser
from herwa.platform import Platform
from tests.chart._chart import (
    ALL_ON,
    CHART,
    NAMESPACE,
    ROOT,
    VALUE_SETS,
    Manifests,
    env_of,
    helm,
    load_yaml_docs,
    pod_spec,
    render,
    workloads,
)
from tests.support.kube import KubeTools

OLDEST, NEWEST = "1.25.0", "1.37.0"
# Custom resources: no built-in schema; checked against their CRDs or by promtool instead.
CUSTOM_KINDS = {
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "ClusterKopfPeering",
    "KopfPeering",
}


@pytest.fixture(scope="module")
def helm_bin(kube_tools: KubeTools) -> Path:
    return kube_tools.helm


@pytest.fixture(scope="module")
def rendered(helm_bin: Path) -> dict[tuple[str, str], Manifests]:
    """Every value set rendered for the oldest and newest supported version."""
    return {
        (name, version): render(helm_bin, *args, kube_version=version)
        for name, args in VALUE_SETS.items()
        for version in (OLDEST, NEWEST)
    }


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_strict(helm_bin: Path, values: str) -> None:
    result = helm(helm_bin, "lint", "--strict", CHART, *VALUE_SETS[values], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_manifest_validates_offline(
    rendered: dict[tuple[str, str], Manifests], values: str, version: str
) -> None:
    manifests = rendered[(values, version)]
    checked = 0
    for doc in manifests:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message}")
        checked += 1
    assert checked >= 12, manifests.kinds()


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_crds_validate_offline(version: str) -> None:
    crds = [d for p in sorted((CHART / "crds").glob("*.yaml")) for d in load_yaml_docs(p)]
    assert {c["spec"]["names"]["kind"] for c in crds} >= {"GuildSubscription"}
    for crd in crds:
        kubernetes_validate.validate(crd, version, strict=True)


def _crd_schema(kind: str) -> dict[str, Any]:
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in load_yaml_docs(path):
            if crd["spec"]["names"]["kind"] == kind:
                schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                return schema
    raise AssertionError(f"no CRD for {kind} in {CHART / 'crds'}")


def test_kopf_peering_matches_its_crd(rendered: dict[tuple[str, str], Manifests]) -> None:
    peering = rendered[("default", NEWEST)].one("ClusterKopfPeering")
    jsonschema.validate(peering, _crd_schema("ClusterKopfPeering"))


def test_old_clusters_get_the_api_versions_they_serve(helm_bin: Path) -> None:
    old = render(helm_bin, kube_version="1.20.2")
    assert old.one("CronJob")["apiVersion"] == "batch/v1beta1"
    assert old.one("PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert "timeZone" not in old.one("CronJob")["spec"]
    new = render(helm_bin, kube_version=NEWEST)
    assert new.one("CronJob")["apiVersion"] == "batch/v1"
    assert new.one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_defaults_render_the_whole_platform(rendered: dict[tuple[str, str], Manifests]) -> None:
    kinds = rendered[("default", NEWEST)].kinds()
    for kind in (
        "StatefulSet",
        "Service",
        "CronJob",
        "Deployment",
        "Job",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ):
        assert kind in kinds
    # External stores by default: no database workloads of any kind.
    images = {
        c["image"]
        for w in workloads(rendered[("default", NEWEST)])
        for c in pod_spec(w)["containers"]
    }
    assert images == {"ghcr.io/herwa/herwa:0.1.0"}
    on = rendered[("all-on", NEWEST)].kinds()
    assert {"ServiceMonitor", "PrometheusRule"} <= set(on)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_pods_are_locked_down(rendered: dict[tuple[str, str], Manifests], values: str) -> None:
    for workload in workloads(rendered[(values, NEWEST)]):
        pod = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root still gets a writable /tmp, for libraries' scratch files.
            tmp_mount = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108
            assert tmp_mount in c["volumeMounts"], where
            assert c["resources"]["requests"], where
        if workload["kind"] != "Deployment":  # only the operator talks to the API server
            assert pod["automountServiceAccountToken"] is False, where


def test_bot_statefulset(rendered: dict[tuple[str, str], Manifests]) -> None:
    m = rendered[("large", NEWEST)]
    sts = m.one("StatefulSet", "-bot")
    svc = m.one("Service", "-bot")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["replicas"] == 16
    pod = pod_spec(sts)
    (bot,) = pod["containers"]
    assert bot["args"] == ["bot"]
    env = env_of(bot)
    assert env["HERWA_BOT_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HERWA_DISCORD_SHARD_COUNT"]["value"] == "128"
    grace = float(env["HERWA_BOT_SHUTDOWN_GRACE_SECONDS"]["value"])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert bot["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "telemetry"}
    assert bot["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bot["ports"] == [{"name": "telemetry", "containerPort": 9100, "protocol": "TCP"}]
    # The default grace period follows the bot's flush budget.
    default = pod_spec(rendered[("default", NEWEST)].one("StatefulSet"))
    default_grace = float(
        env_of(default["containers"][0])["HERWA_BOT_SHUTDOWN_GRACE_SECONDS"]["value"]
    )
    assert default["terminationGracePeriodSeconds"] == math.ceil(default_grace) + 15
    pdb = m.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 2
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_etl_cronjob(rendered: dict[tuple[str, str], Manifests]) -> None:
    cron = rendered[("default", NEWEST)].one("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "*/5 * * * *"
    assert spec["successfulJobsHistoryLimit"] == 3
    assert spec["failedJobsHistoryLimit"] == 3
    assert spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    (etl,) = job["template"]["spec"]["containers"]
    assert etl["args"] == ["etl", "run"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert float(env_of(etl)["HERWA_ETL_DEADLINE_SECONDS"]["value"]) < job["activeDeadlineSeconds"]


def test_operator_uses_the_rbac_identity_and_platform_file(
    rendered: dict[tuple[str, str], Manifests],
) -> None:
    m = rendered[("default", NEWEST)]
    dep = m.one("Deployment", "-operator")
    pod = pod_spec(dep)
    binding = m.one("ClusterRoleBinding")
    (subject,) = binding["subjects"]
    assert pod["serviceAccountName"] == subject["name"]
    assert subject["name"] in [sa["metadata"]["name"] for sa in m.all("ServiceAccount")]
    (op,) = pod["containers"]
    env = env_of(op)
    assert (
        env["HERWA_OPERATOR_PEERING_NAME"]["value"]
        == m.one("ClusterKopfPeering")["metadata"]["name"]
    )
    platform_file = Path(env["HERWA_OPERATOR_PLATFORM_FILE"]["value"])
    mount = next(v for v in op["volumeMounts"] if v["mountPath"] == str(platform_file.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = m.one("ConfigMap", volume["configMap"]["name"])
    text = cm["data"][platform_file.name]
    # The chart's default tiers/commands are exactly the product's platform.yaml, and valid.
    assert yaml.safe_load(text) == yaml.safe_load((ROOT / "herwa" / "platform.yaml").read_text())
    Platform.model_validate(yaml.safe_load(text))


def test_migration_is_a_job_of_the_release_that_every_role_waits_for(
    rendered: dict[tuple[str, str], Manifests],
) -> None:
    """No hook: a hook cannot read the release's Secret (it does not exist yet at pre-install),
    and a copy made for it stayed behind whenever the migration failed."""
    for m in rendered.values():
        for doc in m:
            hook = doc["metadata"].get("annotations", {}).get("helm.sh/hook")
            assert hook in (None, "test"), f"{doc['kind']} {doc['metadata']['name']} is a hook"
    m = rendered[("default", NEWEST)]
    job = m.one("Job", "-migrate-1")  # one Job per revision: a Job's template is immutable
    assert pod_spec(job)["containers"][0]["args"] == ["migrate"]
    release_secret = m.one("Secret")["metadata"]["name"]
    ref = env_of(pod_spec(job)["containers"][0])["HERWA_POSTGRES_DSN"]["valueFrom"]
    assert ref["secretKeyRef"]["name"] == release_secret
    # The ETL checks the schema inside its recorded run instead: a run held in Init would be
    # neither failed nor succeeded, and no alert could see it.
    assert "initContainers" not in pod_spec(m.one("CronJob"))
    for role in (m.one("StatefulSet"), m.one("Deployment", "-operator")):
        (wait,) = pod_spec(role)["initContainers"]
        assert wait["args"] == ["migrate", "--wait", "--timeout", "600"]
        ref = env_of(wait)["HERWA_CLICKHOUSE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == release_secret
    # With an existing Secret every pod reads that one and the chart makes no copy.
    large = rendered[("large", NEWEST)]
    assert large.all("Secret") == []
    large_job = large.one("Job", "-migrate-1")
    ref = env_of(pod_spec(large_job)["containers"][0])["HERWA_POSTGRES_DSN"]["valueFrom"]
    assert ref["secretKeyRef"]["name"] == "herwa-credentials"


def _sections() -> dict[str, type[config.SettingsSection]]:
    found: dict[str, type[config.SettingsSection]] = {}
    for value in vars(config).values():
        if (
            isinstance(value, type)
            and issubclass(value, config.SettingsSection)
            and value is not config.SettingsSection
        ):
            found[str(value.model_config.get("env_prefix", ""))] = value
    return found


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_herwa_variable_exists_and_parses(
    rendered: dict[tuple[str, str], Manifests], values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each HERWA_* variable the chart sets is a real setting, and the real config accepts the
    values the chart renders (secrets stubbed with well-formed placeholders)."""
    sections = _sections()
    placeholders = {
        "HERWA_POSTGRES_DSN": "postgresql://u:p@h/db",
        "HERWA_REDIS_URL": "redis://h:6379/0",
        "HERWA_CLICKHOUSE_URL": "http://h:8123/db",
        "HERWA_CLICKHOUSE_READONLY_URL": "http://h:8123/db",
        "HERWA_ETL_PULL_POSTGRES_DSN": "postgresql://u:p@h/db",
        "HERWA_DISCORD_TOKEN": "t",
        "HERWA_BOT_POD_NAME": "herwa-bot-0",
    }
    for workload in workloads(rendered[(values, NEWEST)]):
        for container in pod_spec(workload)["containers"]:
            env = {
                name: e.get("value", placeholders.get(name))
                for name, e in env_of(container).items()
                if name.startswith("HERWA_")
            }
            used: set[type[config.SettingsSection]] = set()
            for name in env:
                prefix = next((p for p in sections if p and name.startswith(p)), None)
                assert prefix, f"{name}: no settings section has this prefix"
                section = sections[prefix]
                field = name[len(prefix) :].lower()
                assert field in section.model_fields, (
                    f"{name} is not a setting of {section.__name__}"
                )
                used.add(section)
            with monkeypatch.context() as mp:
                for name, value in env.items():
                    assert value is not None, name
                    mp.setenv(name, value)
                for section in used:
                    config.load(section)


def test_monitoring_and_dashboard_labels_are_configurable(helm_bin: Path) -> None:
    m = render(
        helm_bin,
        *ALL_ON,
        "--set",
        "metrics.serviceMonitor.labels.release=prom-a",
        "--set",
        "metrics.prometheusRule.labels.release=prom-b",
        "--set",
        "grafana.dashboards.label=my_dashboards",
        "--set-string",
        "grafana.dashboards.labelValue=yes",
        "--set",
        "grafana.dashboards.namespace=grafana",
    )
    for sm in m.all("ServiceMonitor"):
        assert sm["metadata"]["labels"]["release"] == "prom-a"
        assert sm["spec"]["endpoints"][0]["port"] == "telemetry"
    assert m.one("PrometheusRule")["metadata"]["labels"]["release"] == "prom-b"
    dashboards = [c for c in m.all("ConfigMap") if "my_dashboards" in c["metadata"]["labels"]]
    assert len(dashboards) >= 2
    for cm in dashboards:
        assert cm["metadata"]["labels"]["my_dashboards"] == "yes"
        assert cm["metadata"]["namespace"] == "grafana"
    pod_monitor = render(
        helm_bin,
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.labels.release=prom-c",
    ).one("PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prom-c"


def test_network_policy(rendered: dict[tuple[str, str], Manifests]) -> None:
    default = rendered[("default", NEWEST)].one("NetworkPolicy")["spec"]
    assert default["policyTypes"] == ["Ingress"]
    assert default["ingress"] == [{"ports": [{"port": "telemetry", "protocol": "TCP"}]}]
    large = rendered[("large", NEWEST)].one("NetworkPolicy")["spec"]
    assert large["policyTypes"] == ["Ingress", "Egress"]
    assert large["ingress"][0]["from"][0]["namespaceSelector"]
    assert {"port": 53, "protocol": "UDP"} in large["egress"][0]["ports"]
    # The helm test pod may reach the roles' telemetry port under both directions' policies.
    to_roles = large["egress"][1]
    assert to_roles["ports"] == [{"port": "telemetry", "protocol": "TCP"}]
    assert to_roles["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "herwa"
    from_test = large["ingress"][1]["from"][0]["podSelector"]["matchLabels"]
    assert from_test["app.kubernetes.io/component"] == "test"


def test_unset_connection_settings_are_left_out(helm_bin: Path) -> None:
    # A set value lands in the Secret; an unset one is left out, so the pod stops with
    # CreateContainerConfigError naming the key (NOTES.txt warns too: see test_install.py).
    secret = render(
        helm_bin,
        "--set-string",
        "secrets.redisUrl=redis://r:6379/0",
        "--set",
        "secrets.skipRenderCheck=true",
        stores=False,
    ).one("Secret", "herwa")
    assert secret["stringData"] == {"redis-url": "redis://r:6379/0"}


def test_missing_store_settings_fail_at_render_time(helm_bin: Path) -> None:
    """Not pods stuck in CreateContainerConfigError until Helm's timeout: a clear error naming
    the values, before anything reaches the cluster."""
    result = helm(helm_bin, "template", "herwa", CHART, check=False)
    assert result.returncode != 0
    assert (
        "secrets.postgresDsn, secrets.redisUrl, secrets.clickhouseUrl, secrets.discordToken "
        "not set and no secrets.existingSecret given" in result.stderr
    )
    assert "secrets.skipRenderCheck=true" in result.stderr
    # One missing value is named alone.
    with pytest.raises(subprocess.CalledProcessError) as missing:
        render(helm_bin, "--set-string", "secrets.redisUrl=")
    assert "secrets.redisUrl not set" in missing.value.stderr
    # An existing Secret, or the GitOps opt-out, renders.
    assert render(helm_bin, "--set", "secrets.existingSecret=mine", stores=False).all("Job")
    assert render(helm_bin, "--set", "secrets.skipRenderCheck=true", stores=False).all("Job")


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")


def test_a_second_release_in_another_namespace_shares_no_cluster_scoped_name(
    helm_bin: Path,
) -> None:
    def cluster_names(namespace: str, release: str = "herwa") -> set[tuple[str, str]]:
        m = render(helm_bin, release=release, namespace=namespace)
        return {(d["kind"], d["metadata"]["name"]) for d in m if d["kind"] in CLUSTER_SCOPED}

    first, second = cluster_names("team-a"), cluster_names("team-b")
    assert {k for k, _ in first} == set(CLUSTER_SCOPED)
    assert not {n for _, n in first} & {n for _, n in second}
    # Names at the length limit stay unique and valid.
    long_ns = "n" * 63
    a = cluster_names(long_ns, release="r" * 30)
    b = cluster_names(long_ns[:-1] + "m", release="r" * 30)
    assert all(len(n) <= 63 for _, n in a | b)
    assert not {n for _, n in a} & {n for _, n in b}


def test_watch_namespace_renders_namespaced_rbac_and_peering(helm_bin: Path) -> None:
    m = render(helm_bin, "--set", "operator.watchNamespace=tenants")
    assert not [d for d in m if d["kind"] in CLUSTER_SCOPED]
    role, binding, peering = m.one("Role"), m.one("RoleBinding"), m.one("KopfPeering")
    for obj in (role, binding, peering):
        assert obj["metadata"]["namespace"] == "tenants"
    jsonschema.validate(peering, _crd_schema("KopfPeering"))
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    op = pod_spec(m.one("Deployment", "-operator"))
    assert (subject["name"], subject["namespace"]) == (op["serviceAccountName"], NAMESPACE)
    env = env_of(op["containers"][0])
    assert env["HERWA_OPERATOR_NAMESPACE"]["value"] == "tenants"
    assert env["HERWA_OPERATOR_PEERING_NAME"]["value"] == peering["metadata"]["name"]
    peering_rules = [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]
    assert {tuple(r["resources"]) for r in peering_rules} == {("kopfpeerings",)}
    assert [r["resourceNames"] for r in peering_rules if "patch" in r["verbs"]] == [
        [peering["metadata"]["name"]]
    ]


def test_bot_pdb_lets_unready_bots_be_evicted_where_supported(helm_bin: Path) -> None:
    new = render(helm_bin, kube_version=NEWEST).one("PodDisruptionBudget")
    assert new["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert (
        "unhealthyPodEvictionPolicy"
        not in render(helm_bin, kube_version=OLDEST).one("PodDisruptionBudget")["spec"]
    )


def test_every_long_running_role_has_a_startup_probe(
    rendered: dict[tuple[str, str], Manifests],
) -> None:
    m = rendered[("default", NEWEST)]
    for kind in ("StatefulSet", "Deployment"):
        for workload in m.all(kind):
            for container in pod_spec(workload)["containers"]:
                probe = container["startupProbe"]
                assert probe["httpGet"] == {"path": "/healthz", "port": "telemetry"}
                assert probe["periodSeconds"] * probe["failureThreshold"] >= 120
                assert "initialDelaySeconds" not in container["livenessProbe"]


def test_operator_objects_carry_the_standard_labels_and_honour_name_override(
    helm_bin: Path,
) -> None:
    m = render(helm_bin, "--set", "nameOverride=watcher")
    operator = [
        d
        for d in m
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    assert {d["kind"] for d in operator} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "Deployment",
        "Service",
    }
    for obj in operator:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "watcher", obj["kind"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
        ):
            assert key in labels, (obj["kind"], key)


def test_pod_monitor_targets_only_ports_that_are_served(helm_bin: Path) -> None:
    m = render(helm_bin, "--set", "metrics.podMonitor.enabled=true")
    (expr,) = m.one("PodMonitor")["spec"]["selector"]["matchExpressions"]
    port = m.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"]
    serving = {
        w["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in workloads(m)
        for c in pod_spec(w)["containers"]
        if any(p["name"] == port for p in c.get("ports", []))
    }
    # The long-running roles start TelemetryServer on that port; batch pods serve nothing.
    assert set(expr["values"]) == serving == {"bot", "operator"}


def test_helm_test_pod_checks_every_role(helm_bin: Path) -> None:
    m = render(helm_bin, "--set", "bot.replicas=3")
    pod = m.one("Pod", "-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/herwa/herwa:0.1.0"
    args = container["args"]
    assert args[0] == "check"
    urls = [args[i + 1] for i, a in enumerate(args) if a == "--readyz"]
    bot = m.one("Service", "-bot")["metadata"]["name"]
    op = m.one("Service", "-operator")["metadata"]["name"]
    assert urls == [
        *(f"http://{bot}-{i}.{bot}.{NAMESPACE}.svc:9100/readyz" for i in range(3)),
        f"http://{op}.{NAMESPACE}.svc:9100/readyz",
    ]
    assert m.one("StatefulSet")["spec"]["serviceName"] == bot
    assert "--stores" in args  # the ETL's readiness: its stores answer
    assert set(env_of(container)) >= {
        "HERWA_POSTGRES_DSN",
        "HERWA_REDIS_URL",
        "HERWA_CLICKHOUSE_URL",
    }
    # The CLI accepts exactly these arguments.
    parsed = build_parser("check").parse_args(args)
    assert parsed.readyz == urls
    assert parsed.stores
    no_etl = render(helm_bin, "--set", "etl.enabled=false").one("Pod", "-test")
    assert "--stores" not in no_etl["spec"]["containers"][0]["args"]
