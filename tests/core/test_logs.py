"""Logging: structured lines, and registered secrets never written, whoever logs them."""

from __future__ import annotations

import io
import json
import logging

from herwa.logs import register_secret, setup_logging


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
