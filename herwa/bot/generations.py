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
   GUILD_CREATEs and holds every message, member and voice event in memory, in order. Shards
   are not handed between standby pods (a pod keeps what it opened until the cut-over), so
   nothing held is lost to a handover.
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
   (the new shard reads behind the old one) is waited for; one older than the new session
   means everything it holds is new. From then on it records live.
4. The old fleet owns nothing (**idle**) and may be stopped; ``bot_fleet.previous`` remembers it.

A shard whose old owner vanished during the cut-over is handed over by another old pod after
the shutdown grace, without anchors: its guilds are recorded by the new fleet from the last
moment the old shard committed (``recorded_until``), so an event within the clocks' skew of that
moment may be lost or doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import orjson

from herwa.bot import metrics
from herwa.bot.buffer import FlushBuffer
from herwa.bot.capture import BadPayload, guild_payload, rejected
from herwa.bot.client import CaptureClient
from herwa.bot.directory import Directory
from herwa.bot.shard_state import shard_of
from herwa.bot.sharding import Coordinator, assigned_shards
from herwa.bot.voice import VoiceTracker
from herwa.config import BotSettings
from herwa.discord_api import bot_gateway
from herwa.json_types import Json

log = logging.getLogger(__name__)
Parser = Callable[[Json], None]

# Events whose effect depends on their order (and whose rows are keyed by receive time or
# change per-guild state): recorded by exactly one generation, split at the anchor.
ORDERED = frozenset(
    {
        "VOICE_STATE_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_REMOVE",
        "GUILD_CREATE",
        "GUILD_DELETE",
        "PRESENCE_UPDATE",
    }
)
# Held by a standby shard until the cut-over. The rest (channels, threads, typing, interactions)
# only update this pod's directory or are counted, and run at once.
HELD = ORDERED | {"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK"}
INTERACTION = "INTERACTION_CREATE"
TAIL = 8  # fingerprints per anchor: one alone could repeat (a member muting twice)
# An anchor received at least this long before the new session began cannot be in it (covers
# the skew between the pods' clocks and the gateway's delivery).
ANCHOR_MARGIN_S = 5.0
# How long a guild waits for its anchor to arrive on a new shard reading behind the old one.
ANCHOR_WAIT_S = 15.0

_replay_at: ContextVar[float | None] = ContextVar("herwa_bot_replay_at", default=None)


def received() -> float:
    """When the event being parsed was received: now, or its receive time while replayed."""
    at = _replay_at.get()
    return time.time() if at is None else at


def received_dt() -> datetime:
    return datetime.fromtimestamp(received(), UTC)


def fingerprint(event: str, d: Json) -> str:
    if event in ("GUILD_CREATE", "GUILD_DELETE"):
        body = orjson.dumps([str(d.get("id")), bool(d.get("unavailable"))])
    else:
        try:
            body = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            body = repr(sorted(d.items(), key=lambda kv: str(kv[0]))).encode()
    return hashlib.blake2b(event.encode() + b"\0" + body, digest_size=8).hexdigest()


def guild_of(event: str, d: Json) -> int | None:
    raw = d.get("id") if event in ("GUILD_CREATE", "GUILD_DELETE") else d.get("guild_id")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def resume_index(seen: list[str], tail: list[str]) -> int | None:
    """Where ``seen`` (one guild's order-sensitive events as a new shard received them) goes on
    past ``tail`` (the last ones the previous generation recorded): the index of the first event
    it did not record, or None if its last one is not in ``seen``. Of several places, the one
    agreeing with most of the tail wins, then the latest."""
    best: tuple[int, int] | None = None
    last = tail[-1]
    for i, fp in enumerate(seen):
        if fp != last:
            continue
        k = 1
        while k < len(tail) and i - k >= 0 and seen[i - k] == tail[-1 - k]:
            k += 1
        if k < len(tail) and i - k >= 0:
            continue  # what precedes it differs: another occurrence of the same event
        if best is None or (k, i) >= best:
            best = (k, i)
    return None if best is None else best[1] + 1


class FleetShard(Protocol):
    """A shard runner as its fleet generation sees it (herwa.bot.shard.ShardRunner)."""

    shard_id: int
    client: CaptureClient | None
    guilds: set[int]

    @property
    def connected(self) -> bool: ...

    async def load_state(self) -> Json | None:
        """Take the shard's Postgres fence and reload its guilds' state."""


class Pod(Protocol):
    """The pod's fleet-level state (herwa.bot.app.BotApp): its name, its shards, the live
    members of its shard count."""

    @property
    def pod(self) -> str: ...

    @property
    def runners(self) -> Mapping[int, FleetShard]: ...

    @property
    def members(self) -> list[str]: ...


@dataclass(frozen=True)
class Anchor:
    tail: list[str]
    at: float  # when the previous generation received its last event (epoch seconds)


@dataclass(frozen=True)
class _Held:
    event: str
    fn: Parser
    d: Json
    at: float
    fp: str | None  # set for order-sensitive events


class Gate:
    """Between one shard's gateway and its parsers: notes the fingerprints of what it records
    (the anchors it hands over), and while its fleet is on standby holds the guilds' events
    until the cut-over."""

    def __init__(self, fleet: Generations, runner: FleetShard, *, standby: bool) -> None:
        self.fleet = fleet
        self.runner = runner
        self.standby = standby
        self.activated = False
        self.held: dict[int, list[_Held]] = defaultdict(list)
        self.waiting: dict[int, tuple[Anchor, float]] = {}  # guild → (anchor, waiting since)
        self.live: set[int] = set()  # guilds replayed and recorded since
        self.tails: dict[int, deque[str]] = {}
        self.last_at: dict[int, float] = {}
        self.initial: set[int] = set()  # guilds of the READY whose GUILD_CREATE is still due
        self.since: float | None = None  # when this session began (its READY)

    def wrap(self, event: str, fn: Parser) -> Parser:
        def gated(d: Json) -> None:
            if event == "READY":
                self._ready(d)
            gid = guild_of(event, d)
            first = event == "GUILD_CREATE" and gid in self.initial
            if first:
                self.initial.discard(gid)
            if gid is None or not self._holding(gid):
                if gid is not None and event in ORDERED and not first:
                    self._note(gid, fingerprint(event, d), received())
                fn(d)
            elif first:
                self._standby_guild(d)
            elif event in HELD:
                fp = fingerprint(event, d) if event in ORDERED else None
                self.held[gid].append(_Held(event, fn, d, time.time(), fp))
                if gid in self.waiting:
                    self._retry(gid)
            else:
                fn(d)

        return gated

    def interactions(self, counted: Parser) -> Parser:
        """INTERACTION_CREATE: counted always, handed to discord.py (the command tree) only by
        a shard that records."""

        def run(d: Json) -> None:
            counted(d)
            client = self.runner.client
            if (self.standby and not self.activated) or client is None:
                return
            client._connection.parse_interaction_create(d)  # type: ignore[arg-type]

        return run

    def _holding(self, gid: int) -> bool:
        if not self.standby or gid in self.live:
            return False
        return not self.activated or gid in self.waiting

    def _note(self, gid: int, fp: str, at: float) -> None:
        tail = self.tails.get(gid)
        if tail is None:
            tail = self.tails[gid] = deque(maxlen=TAIL)
        tail.append(fp)
        self.last_at[gid] = at

    def _ready(self, d: Json) -> None:
        ids = set()
        for g in d.get("guilds") or ():
            with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
                ids.add(int(g["id"]))
        self.initial = ids
        if self.since is not None and self.standby and not self.activated:
            # A new session: what the gateway sent in between is missing from the order, so
            # the anchor is looked for only in what follows.
            for events in self.held.values():
                events[:] = [e for e in events if e.fp is None]
        self.since = time.time()

    def _standby_guild(self, raw: Json) -> None:
        d = guild_payload(raw)
        if d is None:
            return
        self.fleet.directory.add_guild(d)
        self.runner.guilds.add(int(d["id"]))

    # -- the cut-over ---------------------------------------------------------------------
    async def activate(self, anchors: dict[int, Anchor], cutoffs: dict[int, float]) -> None:
        """Record from the previous generation's anchors on (see the module docstring)."""
        fleet = self.fleet
        runner = self.runner
        # The previous generation's final state of these guilds replaces what was loaded
        # when this shard opened.
        fleet.voice.drop_guilds(set(runner.guilds))
        await runner.load_state()
        sid = runner.shard_id
        previous = fleet.previous
        anchored = {g for g in anchors if shard_of(g, fleet.count) == sid}
        done: set[int] = set()
        while True:
            # Guilds whose events arrived while the others were replayed come round again.
            todo = sorted((set(self.held) | anchored) - done - set(self.waiting))
            if not todo:
                break
            for gid in todo:
                done.add(gid)
                self._activate_guild(gid, anchors.get(gid), cutoffs, previous)
                await asyncio.sleep(0)  # a large replay must not hold up the heartbeats
        # No await since the last look: every guild not waiting for its anchor is live.
        self.activated = True

    def _activate_guild(
        self, gid: int, anchor: Anchor | None, cutoffs: dict[int, float], previous: int | None
    ) -> None:
        ordered = [e for e in self.held.get(gid, []) if e.fp is not None]
        cutoff = cutoffs.get(shard_of(gid, previous)) if previous else None
        if cutoff is not None:
            start = next((i for i, e in enumerate(ordered) if e.at > cutoff), len(ordered))
            metrics.RESHARD_ANCHORS.labels("cutoff").inc()
        elif anchor is None:
            start = 0
        else:
            found = resume_index([e.fp for e in ordered if e.fp], anchor.tail)
            if found is not None:
                start = found
                metrics.RESHARD_ANCHORS.labels("found").inc()
            elif self.since is not None and anchor.at < self.since - ANCHOR_MARGIN_S:
                start = 0
                metrics.RESHARD_ANCHORS.labels("before_session").inc()
            else:
                self.waiting[gid] = (anchor, time.time())
                return
        self._go_live(gid, start)

    def _retry(self, gid: int) -> None:
        anchor, _since = self.waiting[gid]
        seen = [e.fp for e in self.held[gid] if e.fp is not None]
        found = resume_index(seen, anchor.tail)
        if found is not None:
            metrics.RESHARD_ANCHORS.labels("found").inc()
            self._go_live(gid, found)

    def expire_waits(self) -> None:
        now = time.time()
        for gid, (_anchor, since) in list(self.waiting.items()):
            if now - since > ANCHOR_WAIT_S:
                log.warning("guild %s: the previous fleet's last events never arrived", gid)
                metrics.RESHARD_ANCHORS.labels("timed_out").inc()
                self._go_live(gid, 0)

    def _go_live(self, gid: int, start: int) -> None:
        """Replay the guild's held events (order-sensitive ones from index ``start``) with their
        receive times, then let its events through."""
        events = self.held.pop(gid, [])
        self.waiting.pop(gid, None)
        self.live.add(gid)
        i = 0
        for e in events:
            if e.fp is not None:
                i += 1
                if i <= start:
                    metrics.RESHARD_EVENTS.labels("skipped").inc()
                    continue
                self._note(gid, e.fp, e.at)
            metrics.RESHARD_EVENTS.labels("recorded").inc()
            token = _replay_at.set(e.at)
            try:
                e.fn(e.d)
            except BadPayload as exc:
                rejected(e.event, exc.reason)
            except Exception:
                rejected(e.event, "malformed")
                log.exception("unreadable held %s payload skipped", e.event)
            finally:
                _replay_at.reset(token)


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
        self.gates: dict[int, Gate] = {}
        self.handing: set[int] = set()  # shards this pod stops at a cut-over, to hand over
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
        gate = Gate(self, runner, standby=self.role == "standby" or late)
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
            for gate in list(self.gates.values()):
                gate.expire_waits()
            await asyncio.sleep(interval)

    async def refresh(self) -> None:
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


# -- ``herwa reshard`` ----------------------------------------------------------------------


async def set_target(conn: asyncpg.Connection, shard_count: int) -> str:
    """Make ``shard_count`` the fleet's target; returns what happens next. Refused (ValueError)
    while a cut-over to another count is under way."""
    if shard_count < 1:
        raise ValueError(f"the shard count must be at least 1, not {shard_count}")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT recording, target, phase FROM bot_fleet FOR UPDATE")
        if row is None:
            await conn.execute(
                "INSERT INTO bot_fleet (recording, target) VALUES ($1, $1)", shard_count
            )
            return f"the fleet records with {shard_count} shards"
        recording, target, phase = row["recording"], row["target"], row["phase"]
        if phase == "cutover" and target != shard_count:
            raise ValueError(
                f"a cut-over from {recording} to {target} shards is under way; run this again "
                "once it is done"
            )
        if shard_count == target:
            return f"unchanged: target {target} shards (recording {recording}, {phase})"
        if shard_count == recording:
            await conn.execute(
                "UPDATE bot_fleet SET target = recording, phase = 'steady', updated_at = now()"
            )
            return f"cancelled the move to {target} shards: recording {recording}"
        # The handovers of an earlier cut-over from this count are history; its anchors stay:
        # each is the last order-sensitive event its guild had recorded by this count.
        await conn.execute("DELETE FROM bot_handovers WHERE shard_count = $1", recording)
        await conn.execute(
            "UPDATE bot_fleet SET target = $1, phase = 'standby', cutover_at = NULL, "
            "updated_at = now()",
            shard_count,
        )
        return (
            f"target {shard_count} shards: pods of that count connect on standby and take over "
            f"from the {recording} recording shards once all are connected"
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard-count", type=int, required=True, help="the shard count the bot fleet should run"
    )


def run(args: argparse.Namespace) -> int:
    from herwa import config

    async def main() -> int:
        dsn = config.postgres().dsn.get_secret_value()
        conn = await asyncpg.connect(dsn)
        try:
            log.info("herwa reshard: %s", await set_target(conn, args.shard_count))
        except ValueError as exc:
            log.error("herwa reshard: %s", exc)
            return 1
        finally:
            await conn.close()
        return 0

    return asyncio.run(main())
