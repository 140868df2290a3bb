"""The chart drives resharding: every install and upgrade records ``bot.shardCount`` as the bot
fleet's target (``herwa reshard``) after the migration, so ``helm upgrade --set
bot.shardCount=N`` starts the blue/green cut-over (README "Changing the shard count")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart._chart import env_of, pod_spec, render
from tests.support.kube import KubeTools


@pytest.fixture(scope="module")
def helm_bin(kube_tools: KubeTools) -> Path:
    return kube_tools.helm


def test_reshard_hook_records_the_shard_count_after_the_migration(helm_bin: Path) -> None:
    m = render(helm_bin, "--set", "bot.shardCount=8")
    job = m.one("Job", "-reshard")
    migrate = m.one("Job", "-migrate")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(ann["helm.sh/hook-weight"]) > int(
        migrate["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    container = pod_spec(job)["containers"][0]
    assert container["args"] == ["reshard", "--shard-count", "8"]
    # The migration's own hook ServiceAccount and connection string: they exist by then.
    assert pod_spec(job)["serviceAccountName"] == pod_spec(migrate)["serviceAccountName"]
    dsn = env_of(container)["HERWA_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]
    migrate_dsn = env_of(pod_spec(migrate)["containers"][0])["HERWA_POSTGRES_DSN"]
    assert dsn == migrate_dsn["valueFrom"]["secretKeyRef"]
    bot = m.one("StatefulSet", "-bot")
    assert env_of(pod_spec(bot)["containers"][0])["HERWA_DISCORD_SHARD_COUNT"]["value"] == "8"


def test_reshard_hook_absent_without_a_shard_count(helm_bin: Path) -> None:
    # Discord's recommendation is read by each pod; there is no count to record.
    m = render(helm_bin, "--set", "bot.shardCount=null")
    assert not [j for j in m.all("Job") if j["metadata"]["name"].endswith("-reshard")]
