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
