"""Logging: structured lines, and registered secrets never written, whoever logs them."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

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


_SECRET = "uncaught-secret-value-1234"
_UNCAUGHT_PROGRAMS = {
    "main thread": "raise RuntimeError('boom ' + SECRET)",
    "other thread": (
        "def work():\n    raise RuntimeError('boom ' + SECRET)\n"
        "t = threading.Thread(target=work)\nt.start()\nt.join()"
    ),
    "asyncio task never awaited": (
        "async def fail():\n    raise RuntimeError('boom ' + SECRET)\n"
        "async def main():\n    t = asyncio.get_running_loop().create_task(fail())\n"
        "    await asyncio.sleep(0.05)\n    del t\n    gc.collect()\n"
        "asyncio.run(main())"
    ),
}


@pytest.mark.parametrize("where", sorted(_UNCAUGHT_PROGRAMS))
def test_uncaught_exceptions_are_json_and_redacted(where: str) -> None:
    program = (
        "import asyncio, gc, threading\n"
        "from herwa.logs import register_secret, setup_logging\n"
        f"SECRET = {_SECRET!r}\n"
        "register_secret(SECRET)\n"
        "setup_logging('INFO', 'json')\n" + _UNCAUGHT_PROGRAMS[where]
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert _SECRET not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines, f"nothing logged for an uncaught exception in the {where}"
    entries = [json.loads(line) for line in lines]  # every line is JSON: no raw traceback
    (entry,) = [e for e in entries if "exc" in e]
    assert "RuntimeError: boom ***" in entry["exc"]
    assert entry["level"] in {"error", "critical"}


def test_lines_logged_inside_a_span_carry_its_trace_and_span_id() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    tracer = TracerProvider().get_tracer("herwa.test")
    with tracer.start_as_current_span("etl.run") as span:
        logging.getLogger("herwa.etl").info("inside")
    logging.getLogger("herwa.etl").info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_product_code_writes_through_logging_not_print() -> None:
    """A pod's output is JSON log lines; a print() would be a line no log pipeline can parse."""
    root = Path(__file__).resolve().parents[2]
    allowed = {"herwa/bot/cli.py"}  # the telemetry port line, only when the OS chose the port
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted((root / "herwa").rglob("*.py"))
        if not path.is_relative_to(root / "herwa" / "demo")  # the demo prints for a person
        and not path.is_relative_to(root / "herwa" / "simulator")  # not deployed
        and not path.is_relative_to(root / "herwa" / "devstack")  # local tooling
        and str(path.relative_to(root)) not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<![\w.])print\(", line)
    ]
    assert not offenders, offenders
