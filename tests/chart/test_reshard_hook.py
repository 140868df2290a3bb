"""The chart drives resharding: every install and upgrade records ``bot.shardCount`` as the bot
fleet's target (``herwa reshard``), so ``helm upgrade --set bot.shardCount=N`` starts the
blue/green cut-over (README "Changing the shard count"). Not a Helm hook (the chart has none
but its test): a Job of the release like the migration, waiting for the schema first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart._chart import env_of, pod_spec, render
from tests.support.kube import KubeTools


@pytest.fixture(scope="module")
def helm_bin(kube_tools: KubeTools) -> Path:
    return kube_tools.helm


def test_reshard_job_records_the_shard_count_once_the_schema_is_there(helm_bin: Path) -> None:
    m = render(helm_bin, "--set", "bot.shardCount=8")
    # One Job per revision (a Job's pod template is immutable), like the migration's.
    job = m.one("Job", "-reshard-1")
    migrate = m.one("Job", "-migrate-1")
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    pod = pod_spec(job)
    (container,) = pod["containers"]
    assert container["args"] == ["reshard", "--shard-count", "8"]
    # It needs migration 0018 (bot_fleet): it waits for the schema as the bot pods do.
    bot = pod_spec(m.one("StatefulSet", "-bot"))
    assert pod["initContainers"] == bot["initContainers"]
    # The release's ServiceAccount and Secret, as the migration's.
    assert pod["serviceAccountName"] == pod_spec(migrate)["serviceAccountName"]
    assert pod["serviceAccountName"] in [sa["metadata"]["name"] for sa in m.all("ServiceAccount")]
    dsn = env_of(container)["HERWA_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]
    assert dsn["name"] == m.one("Secret")["metadata"]["name"]
    migrate_dsn = env_of(pod_spec(migrate)["containers"][0])["HERWA_POSTGRES_DSN"]
    assert dsn == migrate_dsn["valueFrom"]["secretKeyRef"]
    # The wait for the schema is within the Job's deadline.
    wait_timeout = int(pod["initContainers"][0]["args"][-1])
    assert job["spec"]["activeDeadlineSeconds"] > wait_timeout
    assert env_of(bot["containers"][0])["HERWA_DISCORD_SHARD_COUNT"]["value"] == "8"


def test_reshard_job_absent_without_a_shard_count(helm_bin: Path) -> None:
    # Discord's recommendation is read by each pod; there is no count to record.
    m = render(helm_bin, "--set", "bot.shardCount=null")
    assert [j for j in m.all("Job") if "-reshard" in j["metadata"]["name"]] == []
