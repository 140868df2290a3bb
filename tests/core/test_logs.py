"""Logging: structured lines, and registered secrets never written, whoever logs them."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging

import pytest

from herwa import config
from herwa.etl import cli as etl_cli
from herwa.logs import redact, register_secret, setup_logging


def test_registered_secret_is_redacted_everywhere() -> None:
    token = "MTIzNDU2Nzg5.Gabcde.another-secret"
    register_secret(token)
    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream)
    logging.getLogger("discord.http").warning("POST /interactions/%s/callback failed", token)
    try:
        raise RuntimeError(f"bad token {token}")
    except RuntimeError:
        logging.getLogger("herwa.bot").exception("login failed", extra={"shard": 3})
    output = stream.getvalue()
    assert token not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines[0]["msg"] == "POST /interactions/***/callback failed"
    assert lines[1]["shard"] == 3
    assert "bad token ***" in lines[1]["exc"]


def test_console_format_is_redacted_too() -> None:
    register_secret("console-secret-value")
    stream = io.StringIO()
    setup_logging("INFO", "console", stream)
    logging.getLogger("herwa").info("value=console-secret-value")
    assert "console-secret-value" not in stream.getvalue()
    assert "value=***" in stream.getvalue()


def test_the_etl_registers_its_dsns_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    # Closed ports: the run fails at once, after reading its configuration like the CronJob.
    urls = {
        "HERWA_POSTGRES_DSN": "postgresql://etl:pg%2Fetl-secret@127.0.0.1:1/herwa",
        "HERWA_CLICKHOUSE_URL": "http://etl:ch-etl-secret@127.0.0.1:1/herwa",
        "HERWA_REDIS_URL": "redis://:redis-etl-secret@127.0.0.1:1/0",
    }
    for name, value in urls.items():
        monkeypatch.setenv(name, value)
    for section in (config.postgres, config.clickhouse, config.redis, config.etl):
        section.cache_clear()
    try:
        with contextlib.suppress(Exception):
            args = argparse.Namespace(etl_action="run", loop=False, batch_rows=None, deadline=None)
            etl_cli.run(args)
    finally:
        for section in (config.postgres, config.clickhouse, config.redis, config.etl):
            section.cache_clear()
    line = " ".join([*urls.values(), "pg/etl-secret", "pg%2Fetl-secret", "ch-etl-secret"])
    assert "secret" not in redact(line)
