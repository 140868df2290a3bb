"""The servers a benchmark runs against: the HERWA_* ones where configured, embedded otherwise.

DevStack uses every store given by URL and starts only the missing ones, in a temporary
directory that is removed afterwards. For the embedded ones, :class:`ServerCpu` reads the CPU
time their processes have used (Linux /proc), so a benchmark can show where the time went.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from herwa.devstack import DevStack, Endpoints

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its reaped children), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state, ppid, …; utime, stime, cutime, cstime are fields 14-17.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK


class ServerCpu:
    """CPU seconds used so far by each embedded server, its child processes included."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids

    def seconds(self) -> dict[str, float]:
        stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
        children: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            if stat is not None:
                children.setdefault(stat[0], []).append(pid)
        result: dict[str, float] = {}
        for name, root in self._pids.items():
            total, todo = 0.0, [root]
            while todo:
                pid = todo.pop()
                stat = stats.get(pid)
                if stat is not None:
                    total += stat[1]
                todo.extend(children.get(pid, []))
            result[name] = total
        return result


@contextmanager
def bench_servers() -> Iterator[tuple[Endpoints, ServerCpu]]:
    data_dir = Path(tempfile.mkdtemp(prefix="herwa-bench-"))
    stack = DevStack(
        data_dir,
        postgres_dsn=os.environ.get("HERWA_POSTGRES_DSN"),
        redis_url=os.environ.get("HERWA_REDIS_URL"),
        clickhouse_url=os.environ.get("HERWA_CLICKHOUSE_URL"),
        clickhouse_readonly_url=os.environ.get("HERWA_CLICKHOUSE_READONLY_URL"),
    )
    try:
        endpoints = stack.up()
        pids = {s.name: s.pid for s in stack.status().values() if s.managed and s.pid}
        yield endpoints, ServerCpu(pids)
    finally:
        stack.down()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def bench_stores() -> Iterator[Endpoints]:
    with bench_servers() as (endpoints, _):
        yield endpoints
