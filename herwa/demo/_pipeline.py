"""The demo's stages, in order: stack → … → report → shutdown. See herwa/demo/__init__.py.

Each stage is a function of the run's shared state (``_run.DemoRun``), grouped by what it
does: setting the scene (``_setup``), the live bots (``_live``) and the checks (``_verify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from datetime import datetime
from pathlib import Path

import aiohttp

from herwa import __version__
from herwa.demo import _live, _setup, _verify
from herwa.demo._run import DemoRun
from herwa.devstack import DevStack, Endpoints
from herwa.json_types import Json
from herwa.simulator import Simulator


class Demo(DemoRun):
    """A whole demo run: its stages in order, then keep running or shut everything down."""

    async def run(self) -> None:
        self.opts.results.mkdir(parents=True, exist_ok=True)
        self.http = aiohttp.ClientSession()
        await _setup.stack(self)
        await _setup.migrate(self)
        self.sim = _setup.build_simulator(self.opts)
        await _setup.seed(self)
        await _setup.start_simulator(self)
        await _live.start_bots(self)
        await _live.backfill(self)
        await _live.traffic(self)
        await _verify.flushed(self)
        await _verify.etl(self)
        await _verify.commands(self)

    # -- keep running ----------------------------------------------------------------------
    async def explore(self) -> None:
        """Leave everything up, with gentle live traffic and an ETL run every 15 s."""
        ep, sim = self.require_ep(), self.require_sim()
        self.console.line("")
        self.console.line("Everything keeps running (Ctrl-C stops it all):")
        for line in self.endpoint_lines(ep, sim):
            self.console.line(f"  {line}")
        sim.start_activity(min(self.opts.rate, 20.0))
        while True:
            await asyncio.sleep(15)
            moved, _ = await _verify.run_etl(self)
            self.console.live(
                f"{datetime.now():%H:%M:%S} ETL loaded {sum(moved.values()):,} new rows"
            )

    def endpoint_lines(self, ep: Endpoints, sim: Simulator) -> list[str]:
        ch_port = ep.clickhouse_native_port
        # Loopback-only servers with generated passwords: printing them is what makes the
        # endpoints usable from another terminal (they are in the data dir's secrets.json too).
        creds = urllib.parse.urlsplit(ep.clickhouse_url)
        return [
            f"Postgres     {ep.postgres_dsn}",
            f"Redis        {ep.redis_url}",
            f"ClickHouse   {ep.clickhouse_url}  (read-only: {ep.clickhouse_readonly_url})",
            f"clickhouse-client --host 127.0.0.1 --port {ch_port} --user {creds.username} "
            f"--password {creds.password} --database {creds.path.strip('/')}",
            f"Simulator    {sim.url}/_sim/ledger  (control API under /_sim/)",
            *(f"{b.name:<12} http://127.0.0.1:{b.port}/metrics" for b in self.bots),
            "Grafana      add a ClickHouse datasource with the URL above "
            "(dashboards in charts/herwa/dashboards)",
        ]

    # -- shutdown --------------------------------------------------------------------------
    async def shutdown(self) -> Json:
        """Stop bots (SIGTERM: they flush and exit 0), the simulator, then the stack."""
        self.stopping = True
        out: Json = {"bots": {}, "servers_stopped": False}
        codes = await asyncio.gather(*(b.stop() for b in self.bots), return_exceptions=True)
        for b, code in zip(self.bots, codes, strict=True):
            out["bots"][b.name] = {
                "pid": b.pid,
                "exit_code": code if isinstance(code, int) else repr(code),
            }
        if self.http is not None:
            await self.http.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
        if self.sim is not None and self.sim.url:
            with contextlib.suppress(Exception):
                await self.sim.stop()
        if self.stack is not None:
            await asyncio.to_thread(self.stack.down)
            out["servers_stopped"] = True
        elif self.opts.data_dir.exists():
            # Interrupted while the stack was starting: whatever it started is in its state.
            await asyncio.to_thread(DevStack(self.opts.data_dir).down)
            out["servers_stopped"] = True
        if not self.server_pids and (self.opts.data_dir / "state.json").exists():
            self.server_pids = {}
        pids = {f"bot {b.name}": b.pid for b in self.bots if b.pid is not None}
        pids.update({f"server {n}": p for n, p in self.server_pids.items()})
        out["pids"] = pids
        out["left_running"] = sorted(k for k, p in pids.items() if pid_running(p))
        return out

    def version(self) -> str:
        return __version__


def pid_running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie has exited and counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
