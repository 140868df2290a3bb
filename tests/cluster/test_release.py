"""`helm install` that really runs: every role as a pod on a real node, as an operator runs it.

The tests run in file order on one release (see conftest.py): install, subscription and a
command answered, capture and scaling under traffic, a bot pod deleted mid-traffic, the ETL
CronJob firing on its own, uninstall.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import clickhouse_connect
import pytest
import redis.asyncio as aioredis
import yaml

from herwa.etl import expiry_plan, history_windows
from herwa.etl.families import FAMILIES
from tests.bot.conftest import wait_for
from tests.bot.expect import (
    actual_family_counts,
    actual_messages,
    expected_family_counts,
    expected_messages,
)
from tests.cluster.conftest import NAMESPACE, RELEASE, SHARDS, Release, is_ready
from tests.commands.conftest import text_of
from tests.support.prometheus import Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]
# Each poll runs kubectl or queries Prometheus: twice a second is plenty.
wait_until = functools.partial(wait_for, interval=0.5)
EXAMPLES = Path(__file__).resolve().parents[2] / "k8s" / "examples"


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_install_runs_the_migrate_job_before_every_role(release: Release) -> None:
    # The release's migrate Job ran `herwa migrate` in a pod: the schema is there.
    versions = await _fetch(release.stores.postgres_dsn, "SELECT version FROM schema_migrations")
    assert versions, "the migrate Job applied no migration"
    (job,) = (await release.get("jobs", "-l", "app.kubernetes.io/component=migrate"))["items"]
    assert job["status"].get("succeeded") == 1, job["status"]
    # Every long-running role is Ready (helm --wait returned, and so must the pods say), and
    # started only after its init container had found the schema current.
    bots = await release.pods("bot")
    operators = await release.pods("operator")
    assert len(bots) == 2
    assert all(map(is_ready, bots)), [p["status"] for p in bots]
    assert len(operators) == 1
    assert is_ready(operators[0])
    for pod in [*bots, *operators]:
        (wait,) = pod["status"]["initContainerStatuses"]
        assert wait["state"]["terminated"]["exitCode"] == 0, wait
    # The connection strings live in one Secret, the release's: no copy for the migration.
    secrets = (await release.get("secrets"))["items"]
    assert [s["metadata"]["name"] for s in secrets if s.get("type") == "Opaque"] == [RELEASE]


async def test_helm_test_checks_every_role(release: Release) -> None:
    await asyncio.to_thread(release.node.refresh_dns)
    result = await release.helm("test", RELEASE, "--timeout", "3m", check=False)
    if result.returncode != 0:  # a failed test pod stays behind with its log
        logs = await release.kubectl("logs", "-l", "app.kubernetes.io/component=test", check=False)
        raise AssertionError(f"{result.stdout}\n{result.stderr}\n{logs}")
    assert "Phase:          Succeeded" in result.stdout, result.stdout


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
    # Traffic has stopped: a later scheduled run loads the rest, and every family in ClickHouse
    # then holds exactly what staging holds within each server's history window (the ETL
    # expires the rest: the simulated servers were joined in 2021, so their join rows go).
    dsn = release.stores.postgres_dsn
    staged = await _staged_within_windows(dsn, release.stores.clickhouse_url)
    loaded: dict[str, int] = {}

    async def equal() -> bool:
        client = await clickhouse_connect.get_async_client(dsn=release.stores.clickhouse_url)
        try:
            for table in staged:
                res = await client.query(f"SELECT count() FROM {table} FINAL")  # noqa: S608
                loaded[table] = int(res.result_rows[0][0])
        finally:
            await client.close()
        return loaded == staged

    try:
        await wait_until(equal, 150, "ClickHouse equal to staging")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: staged {staged}, loaded {loaded}") from None
    assert staged["messages"] > 0


async def _staged_within_windows(dsn: str, clickhouse_url: str) -> dict[str, int]:
    """Staging rows per ClickHouse table that lie inside their server's history window, by the
    product's own windows and each table's event-time column (as history expiry reads them)."""
    ch = await clickhouse_connect.get_async_client(dsn=clickhouse_url)
    try:
        catalogue = await expiry_plan.clickhouse_catalogue(ch)
    finally:
        await ch.close()
    conn = await asyncpg.connect(dsn)
    try:
        windows = await history_windows.windows(conn)
        today = datetime.now(UTC).date()
        keep_all = date(1, 1, 1)
        ids = list(windows.guilds)
        cuts = [history_windows.cutoff(windows.guilds[g], today) or keep_all for g in ids]
        default = history_windows.cutoff(windows.default, today) or keep_all
        out: dict[str, int] = {}
        for f in FAMILIES:
            target = expiry_plan.target_for(f.target_table, catalogue[f.target_table])
            assert target is not None, f.target_table
            column = target.column  # staging keeps the event time under the same name
            out[f.target_table] = await conn.fetchval(
                f"SELECT count(*) FROM {f.staging_table} s WHERE s.{column} >= coalesce("  # noqa: S608
                " (SELECT w.cut FROM unnest($1::bigint[], $2::date[]) AS w(guild, cut)"
                "  WHERE w.guild = s.guild_id), $3::date)",
                ids,
                cuts,
                default,
            )
        return out
    finally:
        await conn.close()


OPERATIONS = Path(__file__).resolve().parents[2] / "charts" / "herwa" / "dashboards"


def _panel_queries() -> dict[str, list[str]]:
    """Every PromQL query of the operations dashboard by panel title, its variables filled in as
    Grafana would for this release."""
    dashboard = json.loads((OPERATIONS / "operations.json").read_text())
    panels: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", NAMESPACE)
            panels.setdefault(panel["title"], []).append(expr.replace("$__rate_interval", "1m"))
    return panels


async def test_prometheus_scrapes_the_pods_and_every_operations_panel_has_data(
    release: Release, prometheus: Prometheus
) -> None:
    pods = {p["metadata"]["name"] for c in ("bot", "operator") for p in await release.pods(c)}

    async def all_up() -> bool:
        targets = await asyncio.to_thread(prometheus.targets)
        up = {t["labels"].get("pod") for t in targets if t["health"] == "up"}
        return pods <= up

    await wait_until(all_up, 60, f"Prometheus scraping {sorted(pods)}")
    # Rates need two scrapes; gauges read from Postgres need the operator's next reading.
    empty: dict[str, list[str]] = {}

    async def every_panel_has_data() -> bool:
        empty.clear()
        for title, queries in _panel_queries().items():
            results = [await asyncio.to_thread(prometheus.query, q) for q in queries]
            if not any(results):
                empty[title] = queries
        return not empty

    try:
        await wait_until(every_panel_has_data, 90, "data in every operations panel")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: panels without data: {empty}") from None
    assert await asyncio.to_thread(prometheus.rule_health) == []
    assert not (await asyncio.to_thread(prometheus.firing)) & {"HerwaBotsDown", "HerwaEtlRunFailed"}


async def test_alerts_fire_when_every_bot_is_down_and_the_etl_stops_succeeding(
    release: Release, prometheus: Prometheus
) -> None:
    async def firing(*names: str) -> bool:
        return set(names) <= await asyncio.to_thread(prometheus.firing)

    await release.upgrade(**{"bot.replicas": "0"})
    await wait_until(lambda: firing("HerwaBotsDown"), 120, "HerwaBotsDown firing")

    # ClickHouse becomes unreachable from the cluster: every ETL run now fails, and the last
    # success grows old.
    clickhouse = urllib.parse.urlsplit(release.stores.clickhouse_url).port
    assert clickhouse is not None
    release.node.cut(clickhouse)
    try:
        await wait_until(
            lambda: firing("HerwaEtlRunFailed", "HerwaEtlNotSucceeding"),
            300,
            "HerwaEtlRunFailed and HerwaEtlNotSucceeding firing",
        )
    finally:
        await asyncio.to_thread(release.node.expose, clickhouse)


async def test_uninstall_leaves_no_objects_or_secrets(release: Release) -> None:
    await release.helm("uninstall", RELEASE, "--wait")
    left: dict[str, list[str]] = {}

    async def nothing_left() -> bool:
        left.clear()
        for kind in ("jobs", "pods", "secrets", "configmaps", "statefulsets", "deployments"):
            names = [
                i["metadata"]["name"]
                for i in (await release.get(kind))["items"]
                if i["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE
                or i["metadata"]["name"].startswith(RELEASE)
            ]
            if names:
                left[kind] = names
        return not left

    # The CronJob's Jobs and their pods go with it through the garbage collector, a moment
    # after helm returns.
    try:
        await wait_until(nothing_left, 90, "every object of the release gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: left behind in {NAMESPACE}: {left}") from None
    assert not (await release.get("cronjobs"))["items"]
