"""One shard's life in a pod: load its state, open it (RESUME when a session was left behind),
record its events, and close it resumably before its lease is given up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from discord import app_commands

from herwa.bot import metrics
from herwa.bot.client import CaptureClient
from herwa.bot.commands import install
from herwa.bot.deps import ShardDeps
from herwa.bot.gateway import handlers
from herwa.bot.shard_state import Mark
from herwa.json_types import Json

log = logging.getLogger(__name__)


class ShardRunner:
    def __init__(self, deps: ShardDeps, shard_id: int, token: str) -> None:
        self.deps = deps
        self.shard_id = shard_id
        self.token = token
        self.epoch = 0  # the Postgres fence (bot_gateway_marks.epoch), set by load_state
        self.client: CaptureClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.guilds: set[int] = set()
        self.session_seen = False
        self.last_alive = time.time()
        self.state = "starting"
        self.resumed_from_store = False

    # -- status ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        c = self.client
        return (
            self.session_seen
            and c is not None
            and c.ws is not None
            and c.ws.open
            and self.state == "running"
        )

    def mark(self) -> Mark | None:
        c = self.client
        ws = c.ws if c is not None else None
        if ws is None or ws.session_id is None or ws.sequence is None:
            return None
        if ws.open:
            self.last_alive = time.time()
        return Mark(self.epoch, ws.session_id, ws.sequence, str(ws.gateway))

    def _set_state(self, state: str) -> None:
        for s in ("starting", "running", "stopping"):
            metrics.SHARD_STATE.labels(str(self.shard_id), s).set(1 if s == state else 0)
        self.state = state

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._set_state("starting")
        deps = self.deps
        stored = await self.load_state()
        resume: dict[str, Any] | None = None
        if stored is not None:
            resume = {
                "session": stored["session_id"],
                "sequence": stored["seq"],
                "gateway": stored["resume_url"],
            }
            self.last_alive = stored["alive"]
            self.resumed_from_store = True
        client = CaptureClient(
            shard_id=self.shard_id,
            shard_count=deps.shard_count,
            message_content=deps.message_content,
            presences=deps.presence.enabled,
            guild_ready_timeout=deps.settings.guild_ready_timeout_seconds,
            before_identify=deps.identify_slot,
            wait_for_room=deps.buffer.wait_for_room,
            has_room=deps.buffer.has_room,
        )
        # Resharding: one fleet generation records at a time (bot/generations.py).
        client.install_parsers(*deps.fleet.gate(self, *handlers(self, deps)))
        tree: app_commands.CommandTree[CaptureClient] | None = None
        if deps.commands is not None:
            tree = app_commands.CommandTree(client)
            install(tree, deps.commands)
        self.client = client
        await client.login(deps.token)
        if tree is not None and self.shard_id == 0:
            # Exactly one pod owns shard 0 at a time, so the global command list is
            # published once per (re)start of that shard rather than by every pod.
            await tree.sync()
        self.task = asyncio.get_running_loop().create_task(
            self._run(client, resume), name=f"herwa-shard-{self.shard_id}"
        )
        if deps.settings.backfill_enabled:
            await deps.backfiller.resume_pending(self)
        self._set_state("running")

    async def load_state(self) -> Json | None:
        """Take the shard's Postgres fence and its state; the gateway session to RESUME."""
        stored = await self.deps.state.load(self.shard_id)
        self.epoch = stored.epoch
        self.guilds.update(stored.guilds)
        return stored.resume

    async def _run(self, client: CaptureClient, resume: dict[str, Any] | None) -> None:
        try:
            await client.run_gateway(resume)
        except Exception:
            log.exception("shard %s gateway loop ended with an error", self.shard_id)
            self.deps.failed(self.shard_id)

    async def stop(self, timeout: float) -> None:
        """Close the gateway resumably, flush every row it produced (and its gateway mark),
        then forget its guilds. The caller releases the lease afterwards."""
        self._set_state("stopping")
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop_gateway(), timeout)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            if not self.task.done():
                self.task.cancel()
        await self.deps.buffer.flush(timeout)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        self.deps.voice.drop_guilds(self.guilds)
        for s in ("starting", "running", "stopping"):
            with contextlib.suppress(KeyError):
                metrics.SHARD_STATE.remove(str(self.shard_id), s)
        with contextlib.suppress(KeyError):
            metrics.SHARD_LATENCY.remove(str(self.shard_id))


__all__ = ["ShardRunner"]
