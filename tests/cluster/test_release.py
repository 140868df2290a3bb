"""`helm install` that really runs: every role as a pod on a real node, as an operator runs it.

The tests run in file order on one release (see conftest.py): install, subscription and a
command answered, capture and scaling under traffic, a bot pod deleted mid-traffic, the ETL
CronJob firing on its own, uninstall.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml

from tests.bot.expect import (
    actual_family_counts,
    actual_messages,
    expected_family_counts,
    expected_messages,
)
from tests.cluster.conftest import NAMESPACE, RELEASE, SHARDS, Release, is_ready, wait_until
from tests.commands.conftest import text_of

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]
EXAMPLES = Path(__file__).resolve().parents[2] / "k8s" / "examples"


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_install_runs_the_migration_hook_and_every_role(release: Release) -> None:
    # The pre-install hook ran `herwa migrate` in a pod: the schema is there.
    versions = await _fetch(release.stores.postgres_dsn, "SELECT version FROM schema_migrations")
    assert versions, "the migrate hook applied no migration"
    # Every long-running role is Ready (helm --wait returned, and so must the pods say).
    bots = await release.pods("bot")
    operators = await release.pods("operator")
    assert len(bots) == 2
    assert all(map(is_ready, bots)), [p["status"] for p in bots]
    assert len(operators) == 1
    assert is_ready(operators[0])
    # The hook left nothing behind: its Job and Secret are deleted once it succeeded.
    jobs = await release.get("jobs")
    assert not [j for j in jobs["items"] if "migrate" in j["metadata"]["name"]]


async def test_subscription_is_synced_and_a_bot_pod_answers_in_its_guild(
    release: Release,
) -> None:
    sim = release.sim
    guild = sorted(sim.world.guilds)[0]
    sub = yaml.safe_load((EXAMPLES / "pro.yaml").read_text())
    sub["spec"]["guildId"] = str(guild)
    await release.kubectl("apply", "-f", "-", input=json.dumps(sub))
    name = sub["metadata"]["name"]

    async def ready() -> bool:
        obj = await release.get("guildsubscription", name)
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    await wait_until(ready, 90, f"GuildSubscription {name} Ready")
    rows = await _fetch(
        release.stores.postgres_dsn, "SELECT tier FROM entitlements WHERE guild_id = $1", guild
    )
    assert [r["tier"] for r in rows] == ["pro"]
    r = aioredis.Redis.from_url(release.stores.redis_url)
    try:
        cached = [k async for k in r.scan_iter(match=f"*{guild}*")]
    finally:
        await r.aclose()
    assert cached, "no command cache entry in Redis for the subscribed guild"

    async def published() -> bool:
        return sim.app.find_command("usage", None) is not None

    await wait_until(published, 60, "commands synced by the bot")
    answer = await sim.invoke_command(guild, "usage", timeout=30)
    assert "Tier: **pro**" in text_of(answer)


async def _connected_shards(release: Release) -> Counter[int]:
    counts: Counter[int] = Counter()
    for s in release.sim.sessions():
        if s.connected:
            counts[s.shard_id] += 1
    return counts


async def _equal_to_ledger(release: Release) -> bool:
    dsn = release.stores.postgres_dsn
    if await actual_messages(dsn) != expected_messages(release.sim, content=False):
        return False
    actual = await actual_family_counts(dsn)
    expected = expected_family_counts(release.sim)
    return all(actual[k] == expected[k] for k in ("edits", "deletes", "joins"))


async def test_bots_capture_while_scaling_3_then_1(release: Release) -> None:
    sim = release.sim
    sim.start_activity(rate=60)
    never_twice = asyncio.create_task(_watch_no_shard_twice(release))
    try:
        for replicas in (3, 1):
            await release.upgrade(**{"bot.replicas": str(replicas)})

            async def settled(n: int = replicas) -> bool:
                pods = await release.pods("bot")
                shards = await _connected_shards(release)
                return (
                    len(pods) == n
                    and all(map(is_ready, pods))
                    and sorted(shards) == list(range(SHARDS))
                )

            await wait_until(settled, 120, f"{replicas} bot pods owning every shard")
    finally:
        await sim.stop_activity()
        never_twice.cancel()
    twice = await asyncio.gather(never_twice, return_exceptions=True)
    assert isinstance(twice[0], asyncio.CancelledError), twice
    await wait_until(lambda: _equal_to_ledger(release), 60, "staging equal to the ledger")


async def _watch_no_shard_twice(release: Release) -> None:
    while True:
        counts = await _connected_shards(release)
        assert all(n <= 1 for n in counts.values()), f"a shard connected twice: {counts}"
        await asyncio.sleep(0.05)


async def test_deleting_a_bot_pod_mid_traffic_flushes_and_loses_nothing(release: Release) -> None:
    sim = release.sim
    (pod,) = await release.pods("bot")
    name = pod["metadata"]["name"]
    sim.start_activity(rate=80)
    await asyncio.sleep(3)
    # Follow the pod's log from before the delete to its container's end.
    follow = await asyncio.create_subprocess_exec(
        *release.node.cluster.kubectl_args("-n", NAMESPACE, "logs", "-f", name),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=release.node.cluster.tool_env(),
    )
    await asyncio.sleep(1)
    await release.kubectl("delete", "pod", name, "--wait=true", "--timeout=90s")
    await sim.stop_activity()
    out, _ = await asyncio.wait_for(follow.communicate(), 30)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    messages = [line["msg"] for line in lines]
    # SIGTERM reached the bot, which closed its shards, flushed everything and exited.
    assert "shutting down: closing shards and flushing" in messages, messages[-5:]
    stopped = [line for line in lines if line["msg"] == "bot pod stopped"]
    assert stopped, messages[-5:]
    assert stopped[0]["flushed_everything"] is True

    async def back() -> bool:
        pods = await release.pods("bot")
        return len(pods) == 1 and is_ready(pods[0])

    await wait_until(back, 120, "the bot pod recreated and Ready")
    await wait_until(lambda: _equal_to_ledger(release), 60, "staging equal to the ledger")


async def test_the_etl_cronjob_fires_and_clickhouse_equals_staging(release: Release) -> None:
    async def a_job_succeeded() -> bool:
        jobs = await release.get("jobs")
        return any(j.get("status", {}).get("succeeded") for j in jobs["items"])

    await wait_until(a_job_succeeded, 150, "an ETL Job started by the CronJob to succeed")
    # A run after the last event: the one that succeeded may have started before it.
    import clickhouse_connect

    dsn = release.stores.postgres_dsn
    staged = (await _fetch(dsn, "SELECT count(*) AS n FROM message_events"))[0]["n"]

    async def loaded() -> bool:
        client = await clickhouse_connect.get_async_client(dsn=release.stores.clickhouse_url)
        try:
            res = await client.query("SELECT count() FROM message_events FINAL")
            return bool(int(res.result_rows[0][0]) == staged)
        finally:
            await client.close()

    await wait_until(loaded, 150, f"ClickHouse holding the {staged} staged messages")


async def test_uninstall_leaves_no_hook_objects_or_secrets(release: Release) -> None:
    await release.helm("uninstall", RELEASE, "--wait")
    for kind in ("jobs", "secrets", "configmaps", "statefulsets", "deployments", "cronjobs"):
        items = (await release.get(kind))["items"]
        left = [
            i["metadata"]["name"]
            for i in items
            if i["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE
            or i["metadata"]["name"].startswith(RELEASE)
        ]
        assert not left, f"{kind} left behind in {NAMESPACE}: {left}"
