"""`herwa check`, what the chart's `helm test` pod runs: real roles' /readyz, real stores."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.parse

from herwa.devstack import Endpoints
from herwa.schema import migrate
from herwa.telemetry import Readiness, TelemetryServer


async def herwa_check(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, object]]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.cli",
        "check",
        *args,
        env={**os.environ, **(env or {}), "HERWA_TELEMETRY_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    lines = [json.loads(line) for line in (stdout + stderr).decode().splitlines()]
    return process.returncode, lines


async def test_every_readyz_must_answer_200() -> None:
    states = {"a": Readiness(True), "b": Readiness(False, {"shards": "0/2 connected"})}

    async def ready_a() -> Readiness:
        return states["a"]

    async def ready_b() -> Readiness:
        return states["b"]

    async with (
        TelemetryServer("127.0.0.1", 0, readiness=ready_a) as a,
        TelemetryServer("127.0.0.1", 0, readiness=ready_b) as b,
    ):
        urls = [f"http://127.0.0.1:{s.port}/readyz" for s in (a, b)]
        args = [x for url in urls for x in ("--readyz", url)]
        code, lines = await herwa_check(*args, "--wait", "0")
        assert code == 1
        failed = {line["check"]: line for line in lines if line["msg"] == "not ready"}
        assert set(failed) == {urls[1]}
        assert "0/2 connected" in str(failed[urls[1]]["error"])

        # A role that becomes ready within --wait passes.
        async def become_ready() -> None:
            await asyncio.sleep(1)
            states["b"] = Readiness(True)

        flip = asyncio.create_task(become_ready())
        code, lines = await herwa_check(*args, "--wait", "30")
        await flip
        assert code == 0, lines
        assert {line["check"] for line in lines if line["msg"] == "ready"} == set(urls)


async def test_stores_must_answer_and_be_migrated(endpoints: Endpoints) -> None:
    code, lines = await herwa_check("--stores", "--wait", "0", env=endpoints.as_env())
    assert code == 1  # reachable, but no schema yet
    assert [line["check"] for line in lines if line["msg"] == "not ready"] == ["postgres"]
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    code, lines = await herwa_check("--stores", "--wait", "0", env=endpoints.as_env())
    assert code == 0, lines
    assert {line["check"] for line in lines if line["msg"] == "ready"} == {
        "postgres",
        "redis",
        "clickhouse",
        "clickhouse reaches postgres",  # the ETL's default transfer: ClickHouse pulls
    }


async def test_a_clickhouse_that_cannot_reach_postgres_fails_the_etl_check(
    endpoints: Endpoints,
) -> None:
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    dsn = urllib.parse.urlsplit(endpoints.postgres_dsn)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    elsewhere = dsn._replace(netloc=f"{dsn.username}:{dsn.password}@127.0.0.1:{closed}")
    env = {**endpoints.as_env(), "HERWA_ETL_PULL_POSTGRES_DSN": urllib.parse.urlunsplit(elsewhere)}
    code, lines = await herwa_check("--stores", "--wait", "0", env=env)
    assert code == 1
    (failed,) = [line for line in lines if line["msg"] == "not ready"]
    assert failed["check"] == "clickhouse reaches postgres"
    assert "HERWA_ETL_TRANSFER=push" in str(failed["error"])
    assert str(dsn.password) not in json.dumps(lines)
    # With push, ClickHouse need not reach Postgres.
    code, lines = await herwa_check(
        "--stores", "--wait", "0", env={**env, "HERWA_ETL_TRANSFER": "push"}
    )
    assert code == 0, lines
    assert "clickhouse reaches postgres" not in {line["check"] for line in lines}


async def test_bad_input_is_refused_with_a_clear_error() -> None:
    code, _ = await herwa_check()
    assert code == 1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.cli",
        "check",
        "--readyz",
        "ftp://x/readyz",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "not an http(s) URL" in stderr.decode()
