"""Process plumbing shared by the three servers: ports, spawning, liveness, stopping, logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class DevStackError(RuntimeError):
    """A server of the embedded stack could not be started, reached or stopped."""


def free_port() -> int:
    """A port that was free a moment ago; callers must cope with losing the race for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port whose old connections sit in TIME_WAIT after a restart is
        # free for a listener, and reusing it keeps yesterday's DSNs valid.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def process_start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), None if gone or a zombie.

    Recorded next to each pid so that a recycled pid is never mistaken for our server
    (and never signalled).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(pid: int, start_time: int | None) -> bool:
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


@dataclass
class Launch:
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] | None = None
    # Set when running as root: Postgres refuses to run as root.
    user: str | None = None


def spawn(launch: Launch, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
            f"{' '.join(launch.argv)}\n".encode()
        )
        log.flush()
        # A new session keeps the servers out of the caller's process group, so a Ctrl-C in
        # the terminal that ran `herwa dev up` does not take them down with it.
        return subprocess.Popen(  # noqa: S603 - argv is built by us, never from user input
            list(launch.argv),
            cwd=launch.cwd,
            env=dict(launch.env) if launch.env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **as_user(launch.user),
        )


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess kwargs that drop to `user` completely.

    `user=` alone keeps root's gid and groups, and then a root-owned directory with only the
    "others" search bit (as we set on PGDATA's parents) is *not* traversable: the group class
    (root, no bits) wins over "others".
    """
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def stop_process(
    pid: int,
    start_time: int | None,
    *,
    first_signal: signal.Signals = signal.SIGTERM,
    timeout: float = 15.0,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Signal, wait, then SIGKILL the whole process group. True if something was stopped."""
    if not is_alive(pid, start_time):
        _reap(popen)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(popen)
        if not is_alive(pid, start_time):
            break
        time.sleep(0.05)
    else:
        # The server was started as a session leader, so its pid is also its process group:
        # this reaches Postgres backends and anything else it forked.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5.0
        while is_alive(pid, start_time) and time.monotonic() < kill_deadline:
            _reap(popen)
            time.sleep(0.05)
    _reap(popen)
    return True


def _reap(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is not None:
        popen.poll()


def log_tail(path: Path, *, offset: int = 0, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
