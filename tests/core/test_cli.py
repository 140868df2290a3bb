"""The `herwa` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from herwa.cli import SUBCOMMANDS


def _herwa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herwa.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_role() -> None:
    result = _herwa("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_explains_itself(name: str) -> None:
    result = _herwa(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: herwa " + name in result.stdout


def test_invalid_configuration_exits_2_naming_the_variable() -> None:
    result = _herwa(
        "migrate",
        env={
            "HERWA_POSTGRES_DSN": "postgresql://u:topsecret@127.0.0.1:1/x",
            "HERWA_CLICKHOUSE_URL": "clickhouse://nope",
        },
    )
    assert result.returncode == 2
    assert "HERWA_CLICKHOUSE_URL" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_bot_without_a_readonly_clickhouse_url_refuses_to_start() -> None:
    # The read-write URL must never serve the queries users shape through slash commands.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
    env.update(
        {
            "HERWA_DISCORD_TOKEN": "bot-token-secret",
            "HERWA_DISCORD_SHARD_COUNT": "1",
            "HERWA_BOT_MAX_CONCURRENCY": "1",
            "HERWA_POSTGRES_DSN": "postgresql://u:pgsecret@127.0.0.1:1/x",
            "HERWA_REDIS_URL": "redis://127.0.0.1:1/0",
            "HERWA_CLICKHOUSE_URL": "http://writer:chsecret@127.0.0.1:1/herwa",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "herwa.cli", "bot"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "HERWA_CLICKHOUSE_READONLY_URL: required but not set" in result.stderr
    for secret in ("bot-token-secret", "pgsecret", "chsecret"):
        assert secret not in result.stderr + result.stdout
