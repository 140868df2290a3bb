"""`herwa bot` processes started by the demo: spawn, wait for the telemetry port, probe, stop.

The same pattern the bot tests use (tests/bot/conftest.py), written again here because product
code must not import test code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from herwa.bot.sharding import assigned_shards
from herwa.json_types import Json

# Coordination tuned for one machine: the production defaults (5 s heartbeats, 15 s lease TTL,
# 5 s between IDENTIFYs) would spend most of a short demo waiting for timers.
FAST_ENV = {
    "HERWA_BOT_MEMBER_HEARTBEAT_SECONDS": "0.5",
    "HERWA_BOT_MEMBER_TTL_SECONDS": "3.0",
    "HERWA_BOT_IDENTIFY_WINDOW_SECONDS": "0.3",
    "HERWA_BOT_MAX_CONCURRENCY": "1",
    "HERWA_BOT_GUILD_READY_TIMEOUT_SECONDS": "0.5",
    "HERWA_BOT_FLUSH_INTERVAL_SECONDS": "0.3",
    "HERWA_BOT_SHUTDOWN_GRACE_SECONDS": "15",
    "HERWA_TELEMETRY_PORT": "0",
    "HERWA_TELEMETRY_HOST": "127.0.0.1",
    "HERWA_TELEMETRY_LOG_FORMAT": "console",
    "HERWA_DISCORD_MESSAGE_CONTENT_INTENT": "true",
    # Presence transitions of the guilds whose tier grants presence (the pro and enterprise
    # subscriptions); live only, as the bot stamps them on receipt.
    "HERWA_BOT_PRESENCE_CAPTURE": "true",
    "OTEL_SDK_DISABLED": "true",
}


def pod_names(count: int, shard_count: int) -> list[str]:
    """Pod names such that rendezvous hashing gives every pod its share of the shards (names
    are what the assignment hashes, so "bot-0", "bot-1" may happen to leave one pod idle)."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        trial = [*names, f"bot-{i}"]
        i += 1
        # Balanced where possible, so both pods visibly do an equal share.
        want = max(1, shard_count // count)
        if all(len(assigned_shards(trial, n, shard_count)) >= want for n in trial):
            names = trial
    return names


class BotProcess:
    """One `herwa bot` pod as a child process in its own session: a Ctrl-C in the terminal
    reaches the demo only, which then stops the bots in order (SIGTERM flushes them)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "herwa.cli", "bot"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        stdout = self.proc.stdout
        if stdout is None:
            raise RuntimeError("no stdout pipe")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while self.port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name} printed no telemetry port in {timeout:.0f}s")
            line = await asyncio.wait_for(loop.run_in_executor(None, stdout.readline), remaining)
            if not line:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            if line.startswith(b"HERWA_BOT_TELEMETRY_PORT="):
                self.port = int(line.split(b"=", 1)[1])
        # Nothing else is printed on stdout; close our end so the pipe can never fill up.
        stdout.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    async def readyz(self, session: aiohttp.ClientSession) -> Json:
        async with session.get(
            f"http://127.0.0.1:{self.port}/readyz", timeout=aiohttp.ClientTimeout(total=3)
        ) as r:
            data: Json = await r.json(content_type=None)
            return data

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(
            f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=3)
        ) as r:
            return await r.text()

    async def stop(self, grace: float = 25.0) -> int | None:
        """SIGTERM (the bot flushes its buffer and exits 0), SIGKILL after ``grace``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            # A child's exit is not awaitable without a child watcher; poll it.
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        self.exit_code = proc.returncode
        return self.exit_code


def bot_env(base: dict[str, str], name: str, shard_count: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
    env.update(base)
    env.update(FAST_ENV)
    env["HERWA_DISCORD_SHARD_COUNT"] = str(shard_count)
    env["HERWA_BOT_POD_NAME"] = name
    return env


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {"name{labels}": value}, samples only."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
