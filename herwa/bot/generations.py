"""Blue/green resharding: change the shard count under traffic, with no gap and nothing twice.

Discord routes a guild to shard ``(guild_id >> 22) % shard_count``, so a fleet of another shard
count receives the same guilds on sessions of its own. The state capture keeps per guild (open
voice sessions, member counts) and the rows keyed by the bot's receive time (member leaves,
voice sessions) would clash or be stored twice if two fleets recorded one guild, so exactly one
*generation* records at a time: the fleet whose shard count is ``bot_fleet.recording``
(postgres migration 0018). Pods of one shard count share out that count's shards (membership
and leases are keyed by it, :mod:`herwa.bot.sharding`).

The procedure (``herwa reshard --shard-count M``, run by the chart's reshard Job on every
install/upgrade, sets ``bot_fleet.target``). The Job runs alongside the bot pods' rollout: a pod
whose count is neither recording nor the target (a new pod started before the Job set it) opens
nothing and looks again every heartbeat (:meth:`Generations.refresh`).

1. **standby** — pods of the target count join, check the daily session-start budget
   (``GET /gateway/bot``: enough IDENTIFYs left for every new shard and one more of every
   recording shard, else they wait), and open their shards: each IDENTIFY takes the shared
   per-bucket identify slot, so both fleets together stay within ``max_concurrency`` per
   window. A standby shard records nothing: it keeps its guilds' channels from their
   GUILD_CREATEs and holds their message, member, voice, reaction and presence events in
   memory, in order, for ``reshard_hold_seconds`` (``HERWA_BOT_RESHARD_HOLD_SECONDS``, 10
   minutes by default) before the cut-over began: older ones were stored by the recording
   fleet, precede every anchor and cut-off time taken at the cut-over, and are dropped, so a
   standby that lasts (a new pod that cannot be scheduled, a short session budget) does not
   grow without bound. The pod drops only what it received that long before it last read
   that the cut-over had not begun, so a pod that cannot read ``bot_fleet`` drops nothing
   the cut-over may need. Shards are not handed between standby pods (a pod keeps what it
   opened until the cut-over), so nothing held is lost to a handover.
2. **cut-over** (all at once) — once every shard of the target count is connected, the
   recording fleet stops its shards as on a handover (close the gateway, flush every row with
   its gateway mark) and, with nothing left unflushed, writes one ``bot_handovers`` row per
   shard and, per guild, the fingerprints of the last events it recorded whose order matters
   (voice states, member joins and leaves, guild create/delete): ``bot_handover_anchors``.
3. **takeover** — when every old shard is handed over, the target fleet becomes the recording
   one. Each shard reloads its guilds' open voice sessions and member counts (now final) and
   replays what it held, stamped with the times it received them: message events all (they
   merge on Discord's ids with what the old fleet stored), order-sensitive events only after
   the guild's anchor. Discord delivers a guild's events to every session in one order, so the
   anchor's place in what the new shard received is exact. An anchor that is not there yet
   (the new shard reads behind the old one) is waited for; one older than the new session,
   or than the held events dropped for their age, means everything it holds is new. From
   then on it records live.
4. The old fleet owns nothing (**idle**) and may be stopped; ``bot_fleet.previous`` remembers it.

A shard whose old owner vanished during the cut-over is handed over by another old pod after
the shutdown grace, without anchors: its guilds are recorded by the new fleet from the last
moment the old shard committed (``recorded_until``), so an event within the clocks' skew of that
moment may be lost or doubled. If that moment is more than the hold horizon before the
cut-over began (the old shard was disconnected that long), the events in between were neither
recorded by the old fleet nor kept by the new one: lost to all but backfill.

Where the parts are: this module holds the pod's role and the fleet's phases;
:mod:`herwa.bot.shard_gate` holds and replays one shard's events; :mod:`herwa.bot.event_order`
finds the anchor in what a shard received; :mod:`herwa.bot.reshard` is the command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from herwa.bot import metrics
from herwa.bot.buffer import FlushBuffer
from herwa.bot.client import Parser
from herwa.bot.directory import Directory
from herwa.bot.event_order import Anchor
from herwa.bot.shard_gate import INTERACTION, FleetShard, ShardGate
from herwa.bot.sharding import Coordinator, assigned_shards
from herwa.bot.voice import VoiceTracker
from herwa.config import BotSettings
from herwa.discord_api import bot_gateway
from herwa.json_types import Json

log = logging.getLogger(__name__)


class Pod(Protocol):
    """The pod's fleet-level state (herwa.bot.app.BotApp): its name, its shards, the live
    members of its shard count."""

    @property
    def pod(self) -> str: ...

    @property
    def runners(self) -> Mapping[int, FleetShard]: ...

    @property
    def members(self) -> list[str]: ...


class Generations:
    """This pod's part in the fleet's generations (see the module docstring)."""

    def __init__(
        self,
        pod: Pod,
        *,
        pool: asyncpg.Pool,
        coordinator: Coordinator,
        settings: BotSettings,
        token: str,
        directory: Directory,
        voice: VoiceTracker,
        buffer: FlushBuffer,
    ) -> None:
        self.pod = pod
        self.pool = pool
        self.coordinator = coordinator
        self.settings = settings
        self.token = token
        self.directory = directory
        self.voice = voice
        self.buffer = buffer
        self.count = coordinator.shard_count
        self.role = "starting"
        self.previous: int | None = None
        self.gates: dict[int, ShardGate] = {}
        self.handing: set[int] = set()  # shards this pod stops at a cut-over, to hand over
        # When this pod last read that the cut-over had not begun (phase 'standby'): held events
        # received the hold horizon before then are never replayed (see the module docstring).
        self.standby_seen_at: float | None = None
        self._budget_ok = False
        self._budget_checked = 0.0
        self._cutover_at: float | None = None
        self._anchors_pending: dict[int, list[tuple[int, int, list[str], datetime]]] = {}
        self._takeover: tuple[dict[int, Anchor], dict[int, float]] | None = None
        self._before_takeover: set[FleetShard] = set()
        self._activations: set[asyncio.Task[None]] = set()

    # -- hooks ----------------------------------------------------------------------------
    def gate(
        self, runner: FleetShard, replace: dict[str, Parser], wrap: dict[str, Parser]
    ) -> tuple[dict[str, Parser], dict[str, Parser]]:
        """The shard's parsers behind its gate."""
        # A shard that loaded its state before the take-over holds and takes over like the rest.
        late = self.role == "recording" and runner in self._before_takeover
        gate = ShardGate(self, runner, standby=self.role == "standby" or late)
        self.gates[runner.shard_id] = gate
        if late and self._takeover is not None:
            task = asyncio.get_running_loop().create_task(gate.activate(*self._takeover))
            self._activations.add(task)
            task.add_done_callback(self._activations.discard)
        gated = {e: gate.wrap(e, fn) for e, fn in replace.items()}
        wrapped = {e: gate.wrap(e, fn) for e, fn in wrap.items()}
        counted = wrap.get(INTERACTION)
        if counted is not None:
            # Both fleets receive a guild's interactions: only the recording one answers.
            del wrapped[INTERACTION]
            gated[INTERACTION] = gate.interactions(counted)
        return gated, wrapped

    def desired(self, assigned: set[int]) -> set[int]:
        if self.role == "recording":
            return assigned
        if self.role == "standby":
            # Keep what was opened: a standby shard's held events live only in this pod.
            return assigned | set(self.pod.runners)
        return set()

    def describe(self) -> Json:
        return {"role": self.role, "shard_count": self.count, "previous": self.previous}

    def _set_role(self, role: str) -> None:
        if role != self.role:
            log.info("fleet role: %s (%s shards)", role, self.count)
        self.role = role
        for r in ("recording", "standby", "retiring", "idle", "waiting"):
            metrics.FLEET_ROLE.labels(r).set(1 if r == role else 0)

    # -- loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        interval = self.settings.member_heartbeat_seconds
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("fleet generation check failed: %s: %s", type(exc).__name__, exc)
            self.tick()
            await asyncio.sleep(interval)

    def tick(self) -> None:
        """Every heartbeat: give up anchors waited for too long and, while on standby, drop
        the held events received the hold horizon before the cut-over could have begun."""
        seen = self.standby_seen_at
        trim_before = (
            seen - self.settings.reshard_hold_seconds
            if self.role == "standby" and seen is not None
            else None
        )
        held = 0
        for gate in list(self.gates.values()):
            gate.expire_waits()
            if trim_before is not None:
                gate.trim(trim_before)
            held += gate.holding
        metrics.RESHARD_HELD.set(held)

    async def refresh(self) -> None:
        # Taken before the read: a cut-over the read does not show began after this moment.
        read_at = time.time()
        async with self.pool.acquire() as conn:
            # The first pod of a new installation records with its own shard count.
            await conn.execute(
                "INSERT INTO bot_fleet (recording, target) VALUES ($1, $1) "
                "ON CONFLICT (one) DO NOTHING",
                self.count,
            )
            row = await conn.fetchrow(
                "SELECT recording, target, phase, previous, cutover_at FROM bot_fleet"
            )
        if row is None:
            raise RuntimeError("bot_fleet has no row after the insert")
        recording, target, phase = int(row["recording"]), int(row["target"]), row["phase"]
        self.previous = row["previous"]
        cutover_at = row["cutover_at"]
        self._cutover_at = cutover_at.timestamp() if cutover_at is not None else None
        if recording == self.count:
            if phase == "cutover":
                await self._retire()
            elif self.role == "standby":
                await self._take_over()
            else:
                self._set_role("recording")
        elif target == self.count:
            if self.role not in ("standby",) and not await self._budget(recording):
                self._set_role("waiting")
                return
            self._set_role("standby")
            if phase == "standby":
                self.standby_seen_at = read_at
            await self._publish_standby()
            if phase == "standby" and await self._all_standby():
                await self._exec(
                    "UPDATE bot_fleet SET phase = 'cutover', cutover_at = now(), "
                    "updated_at = now() WHERE phase = 'standby' AND target = $1",
                    self.count,
                )
                log.info("every one of %s shards connected: cut-over begins", self.count)
            elif phase == "cutover" and await self._handed_over(recording):
                await self._exec(
                    "UPDATE bot_fleet SET previous = recording, recording = target, "
                    "phase = 'steady', recording_since = now(), updated_at = now() "
                    "WHERE phase = 'cutover' AND target = $1",
                    self.count,
                )
                await self.refresh()
        else:
            if self.role != "idle":
                log.warning(
                    "%s shards is neither the recording shard count (%s) nor the target (%s): "
                    "this pod records nothing",
                    self.count,
                    recording,
                    target,
                )
            self._set_role("idle")

    async def _exec(self, sql: str, *args: Any) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(sql, *args)

    # -- standby --------------------------------------------------------------------------
    async def _budget(self, recording: int) -> bool:
        """Enough session starts left today for every new shard, plus one re-IDENTIFY of every
        recording shard (a recording pod may have to reconnect during the cut-over)."""
        if self._budget_ok:
            return True
        now = time.monotonic()
        if self._budget_checked and now - self._budget_checked < 60:
            return False
        self._budget_checked = now
        gw = await bot_gateway(self.token)
        remaining = gw.session_starts_remaining
        needed = self.count + recording
        if remaining is not None and remaining < needed:
            log.error(
                "not opening %s shards: %s session starts left today, %s needed "
                "(refilled in %.0f s)",
                self.count,
                remaining,
                needed,
                gw.session_starts_reset_after_s or 0.0,
            )
            return False
        self._budget_ok = True
        return True

    async def _publish_standby(self) -> None:
        co = self.coordinator
        ttl = int(self.settings.member_ttl_seconds * 1000)
        pipe = co.redis.pipeline(transaction=False)
        for sid, runner in self.pod.runners.items():
            if runner.connected:
                pipe.set(co.standby_key(sid), self.pod.pod, px=ttl)
        await pipe.execute()

    async def _all_standby(self) -> bool:
        co = self.coordinator
        values = await co.redis.mget([co.standby_key(s) for s in range(self.count)])
        return all(v is not None for v in values)

    async def _handed_over(self, recording: int) -> bool:
        async with self.pool.acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM bot_handovers WHERE shard_count = $1", recording
            )
        return int(n) == recording

    async def _take_over(self) -> None:
        """Every old shard is handed over: record from the anchors on."""
        previous = self.previous
        anchors: dict[int, Anchor] = {}
        cutoffs: dict[int, float] = {}
        if previous is not None:
            async with self.pool.acquire() as conn:
                for r in await conn.fetch(
                    "SELECT guild_id, tail, received_at FROM bot_handover_anchors "
                    "WHERE shard_count = $1",
                    previous,
                ):
                    anchors[r["guild_id"]] = Anchor(list(r["tail"]), r["received_at"].timestamp())
                for r in await conn.fetch(
                    "SELECT shard_id, recorded_until FROM bot_handovers "
                    "WHERE shard_count = $1 AND recorded_until IS NOT NULL",
                    previous,
                ):
                    cutoffs[r["shard_id"]] = r["recorded_until"].timestamp()
        # From here a new shard opens recording; the open ones switch below.
        self._takeover = (anchors, cutoffs)
        self._before_takeover = set(self.pod.runners.values())
        self._set_role("recording")
        started = time.monotonic()
        for sid, gate in list(self.gates.items()):
            if gate.standby and not gate.activated and self.pod.runners.get(sid) is gate.runner:
                await gate.activate(anchors, cutoffs)
        log.info(
            "took over from %s shards: recording %s shards (%.2f s)",
            previous,
            self.count,
            time.monotonic() - started,
        )

    # -- handing over ---------------------------------------------------------------------
    async def _retire(self) -> None:
        runners = self.pod.runners
        if self.role != "retiring":
            # The coordination loop now stops every shard of this pod (desired is empty), and
            # each stop commits its rows and then its anchors (shard_stopped).
            self.handing = set(runners)
            self._set_role("retiring")
            return
        if set(runners) & self.handing or self.buffer.depth:
            return  # still closing or flushing
        await self._write_anchors()
        if self._anchors_pending:
            return
        if self.handing:
            shards = sorted(self.handing)
            async with self.pool.acquire() as conn:
                await conn.executemany(
                    "INSERT INTO bot_handovers (shard_count, shard_id) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING",
                    [(self.count, s) for s in shards],
                )
            log.info("handed over shards %s", shards)
            self.handing = set()
        await self._hand_over_orphans()

    async def shard_stopped(self, runner: FleetShard) -> None:
        """After a shard closed and flushed (any handover, not only a cut-over): store, per
        guild, the last order-sensitive events it recorded. A guild it recorded none of keeps
        the anchor its previous owner stored."""
        gate = self.gates.get(runner.shard_id)
        if gate is None or gate.runner is not runner or (gate.standby and not gate.activated):
            return
        rows = [
            (self.count, gid, list(tail), datetime.fromtimestamp(gate.last_at[gid], UTC))
            for gid, tail in gate.tails.items()
            if tail
        ]
        if rows:
            self._anchors_pending[runner.shard_id] = rows
        await self._write_anchors()

    async def _write_anchors(self) -> None:
        """Store the anchors of stopped shards; ones Postgres did not take are retried, and
        no shard is handed over before its anchors are stored."""
        for sid, rows in sorted(self._anchors_pending.items()):
            try:
                async with self.pool.acquire() as conn:
                    await conn.executemany(
                        "INSERT INTO bot_handover_anchors (shard_count, guild_id, tail, "
                        "received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (shard_count, guild_id) "
                        "DO UPDATE SET tail = EXCLUDED.tail, received_at = EXCLUDED.received_at",
                        rows,
                    )
            except Exception as exc:
                log.warning("anchors of shard %s not stored yet: %s", sid, exc)
                return
            del self._anchors_pending[sid]

    async def _hand_over_orphans(self) -> None:
        """Shards no pod of this count holds once the grace for stopping has passed: handed
        over from their last committed mark (no anchors)."""
        if self._cutover_at is None:
            return
        settings = self.settings
        if (
            time.time() - self._cutover_at
            < settings.shutdown_grace_seconds + settings.member_ttl_seconds
        ):
            return
        async with self.pool.acquire() as conn:
            done = {
                r["shard_id"]
                for r in await conn.fetch(
                    "SELECT shard_id FROM bot_handovers WHERE shard_count = $1", self.count
                )
            }
        mine = assigned_shards(self.pod.members, self.pod.pod, self.count)
        co = self.coordinator
        for sid in sorted(mine - done):
            if await co.redis.exists(co.lease_key(sid)):
                continue
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bot_handovers (shard_count, shard_id, recorded_until) "
                    "SELECT $1, $2, coalesce((SELECT alive_at FROM bot_gateway_marks "
                    "WHERE shard_count = $1 AND shard_id = $2), now()) ON CONFLICT DO NOTHING",
                    self.count,
                    sid,
                )
            log.warning("shard %s had no owner at the cut-over: handed over by time", sid)
