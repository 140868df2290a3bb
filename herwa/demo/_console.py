"""Progress on the terminal: one numbered line per stage, live lines while a stage runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class StageRecord:
    name: str
    title: str
    seconds: float = 0.0
    ok: bool | None = None  # None: still running or interrupted
    numbers: dict[str, object] = field(default_factory=dict)
    summary: str = ""


class Console:
    def __init__(self, total_stages: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.total = total_stages
        self.stages: list[StageRecord] = []
        # Overwriting a live line only makes sense on a terminal; in a log (CI) every update
        # is its own line, so the lines are rate-limited by the callers instead.
        self.tty = self.out.isatty()
        self._live = False

    def line(self, text: str) -> None:
        self._end_live()
        print(text, file=self.out, flush=True)

    def live(self, text: str) -> None:
        if self.tty:
            print(f"\r\033[K      {text}", end="", file=self.out, flush=True)
            self._live = True
        else:
            print(f"      {text}", file=self.out, flush=True)

    def _end_live(self) -> None:
        if self._live:
            print(file=self.out, flush=True)
            self._live = False

    @contextmanager
    def stage(self, name: str, title: str) -> Iterator[StageRecord]:
        record = StageRecord(name, title)
        self.stages.append(record)
        self.line(f"[{len(self.stages):>2}/{self.total}] {title} …")
        started = time.monotonic()
        try:
            yield record
        finally:
            record.seconds = round(time.monotonic() - started, 2)
        if record.ok is None:
            record.ok = True
        mark = "✓" if record.ok else "✗"
        self.line(f"      {mark} {record.summary or 'done'} ({record.seconds:.1f}s)")
