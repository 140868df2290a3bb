"""`herwa dev up|status|down` as a user runs it: separate processes, servers left detached."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import clickhouse_connect
import redis

from herwa.devstack import is_alive


def _herwa_dev() -> list[str]:
    """The installed `herwa` entry point when it exists, else the module itself."""
    herwa = Path(sys.executable).with_name("herwa")
    if herwa.exists() or shutil.which("herwa"):
        probe = subprocess.run([str(herwa), "dev", "--help"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [str(herwa), "dev"]
    return [sys.executable, "-m", "herwa.devstack.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_herwa_dev(), *args], cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while is_alive(pid, None):
        assert time.monotonic() < deadline, f"process {pid} still running after down"
        time.sleep(0.05)


def _live_processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and is_alive(int(proc.name), None):
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline)
    return found


def _parse_exports(stdout: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stdout.splitlines():
        assert line.startswith("export "), line
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


async def test_up_status_down_round_trip(devstack_dir: Path) -> None:
    up = _run("up", cwd=devstack_dir)
    assert up.returncode == 0, up.stderr
    env = _parse_exports(up.stdout)
    assert set(env) == {
        "HERWA_POSTGRES_DSN",
        "HERWA_REDIS_URL",
        "HERWA_CLICKHOUSE_URL",
        "HERWA_CLICKHOUSE_READONLY_URL",
    }
    data_dir = devstack_dir / ".herwa" / "devstack"  # the default, relative to cwd
    state = json.loads((data_dir / "state.json").read_text())
    pids = {name: item["pid"] for name, item in state["running"].items()}
    assert set(pids) == {"postgres", "redis", "clickhouse"}
    try:
        # The `up` process has exited; the servers answer on their own.
        conn = await asyncpg.connect(env["HERWA_POSTGRES_DSN"])
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        assert redis.Redis.from_url(env["HERWA_REDIS_URL"]).ping()
        ch = clickhouse_connect.get_client(dsn=env["HERWA_CLICKHOUSE_URL"])
        assert ch.command("SELECT 1") == 1
        ch.close()

        again = _run("up", "--json", cwd=devstack_dir)  # idempotent: reuses running servers
        assert again.returncode == 0, again.stderr
        assert {
            k: v for k, v in json.loads(again.stdout).items() if k != "HERWA_CLICKHOUSE_NATIVE_PORT"
        } == env
        state = json.loads((data_dir / "state.json").read_text())
        assert {n: i["pid"] for n, i in state["running"].items()} == pids

        status = _run("status", "--json", cwd=devstack_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert all(report[n]["answering"] and report[n]["managed"] for n in pids)
        assert "***" in report["postgres"]["url"]  # no password in status output

        # A server that died behind our back is stale state: `up` replaces it.
        os.kill(pids["redis"], signal.SIGKILL)
        _wait_gone(pids["redis"])
        assert _run("status", cwd=devstack_dir).returncode == 1
        healed = _run("up", cwd=devstack_dir)
        assert healed.returncode == 0, healed.stderr
        state = json.loads((data_dir / "state.json").read_text())
        assert state["running"]["redis"]["pid"] != pids["redis"]
        pids["redis"] = state["running"]["redis"]["pid"]
        assert _parse_exports(healed.stdout) == env  # same port was free again
    finally:
        down = _run("down", cwd=devstack_dir)
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        _wait_gone(pid)
    state = json.loads((data_dir / "state.json").read_text())
    assert state["running"] == {}
    after = _run("status", "--json", cwd=devstack_dir)
    assert after.returncode == 1
    assert not any(item["alive"] for item in json.loads(after.stdout).values())
    assert _live_processes_mentioning(data_dir) == []
