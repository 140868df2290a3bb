"""Structured logging shared by every role.

Secrets registered here (the Discord token, store passwords) are replaced in every formatted
record, whichever library produced the line: a token that reaches a log line by accident — an
exception message, a URL in an HTTP error — is still never written out. Uncaught exceptions (in
the main thread, other threads, and asyncio tasks nobody awaited) are logged through the same
handler, so they are JSON and redacted too. A line logged while a span is active carries its
``trace_id`` and ``span_id``, so logs and traces join up in the backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal
from urllib.parse import unquote, urlsplit

from opentelemetry import trace

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Fields of a LogRecord that are not user-supplied `extra=` values.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def register_secret(value: str | None) -> None:
    """Never write ``value`` to any log line from now on."""
    if value and len(value) >= 4:  # a shorter "secret" would mangle ordinary words
        with _secrets_lock:
            _secrets.add(value)


def register_url(value: str | None) -> None:
    """Never write a store's DSN or URL, nor its password alone (drivers quote it by itself)."""
    if not value:
        return
    register_secret(value)
    with contextlib.suppress(ValueError):
        password = urlsplit(value).password
        if password:
            register_secret(password)
            register_secret(unquote(password))


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        entry.update(_span_ids())
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def _span_ids() -> dict[str, str]:
    """The active span's ids in the W3C hex form trace backends search by; empty without one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


class _ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(
    level: str = "INFO", fmt: Literal["json", "console"] = "json", stream: object = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py logs every gateway payload at DEBUG; keep it at INFO unless asked explicitly.
    if level != "DEBUG":
        logging.getLogger("discord").setLevel(logging.INFO)
    # Python's default hooks write raw tracebacks to stderr, past the formatter and redaction.
    # (asyncio's default handler for a failed task nobody awaited already logs through
    # logging, to the "asyncio" logger.)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


_uncaught = logging.getLogger("herwa.uncaught")


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C is no error: Python's own behaviour
        sys.__excepthook__(kind, value, tb)
        return
    _uncaught.critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    _uncaught.error(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread_name": args.thread.name if args.thread else None},
    )
