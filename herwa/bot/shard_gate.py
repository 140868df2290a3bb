"""One shard's gate between its gateway and its parsers, for resharding (the procedure is
:mod:`herwa.bot.generations`): it notes the fingerprints of the order-sensitive events it lets
through (the anchors its shard hands over), and while its fleet is on standby holds its
guilds' message, member, voice, reaction and presence events until the cut-over, then replays
them from the previous generation's anchor on.

What it holds is bounded by age, not by the length of the standby: an event received more than
the hold horizon (``HERWA_BOT_RESHARD_HOLD_SECONDS``) before the cut-over began is dropped
(:meth:`ShardGate.trim`). The recording fleet stored it, and the replay never needs it: message
events merge on Discord's ids with what that fleet stored, and order-sensitive ones are replayed
only after the guild's anchor or its old shard's cut-off time, both taken at the cut-over. An
anchor older than everything still held means all of it is new (like one older than the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol

from herwa.bot import metrics
from herwa.bot.capture import BadPayload, guild_payload, rejected
from herwa.bot.client import CaptureClient, Parser
from herwa.bot.directory import Directory
from herwa.bot.event_order import (
    ANCHOR_MARGIN_S,
    ORDERED,
    TAIL,
    Anchor,
    fingerprint,
    guild_of,
    received,
    replaying,
    resume_index,
)
from herwa.bot.shard_state import shard_of
from herwa.bot.voice import VoiceTracker
from herwa.json_types import Json

log = logging.getLogger(__name__)

# Held by a standby shard until the cut-over. The rest (channels, threads, typing, interactions)
# only update this pod's directory or are counted, and run at once.
HELD = ORDERED | {"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK"}
INTERACTION = "INTERACTION_CREATE"
# How long a guild waits for its anchor to arrive on a new shard reading behind the old one.
ANCHOR_WAIT_S = 15.0


class FleetShard(Protocol):
    """A shard runner as its fleet generation sees it (herwa.bot.shard.ShardRunner)."""

    shard_id: int
    client: CaptureClient | None
    guilds: set[int]

    @property
    def connected(self) -> bool: ...

    async def load_state(self) -> Json | None:
        """Take the shard's Postgres fence and reload its guilds' state."""


class GateFleet(Protocol):
    """What a gate needs of its pod's fleet generation (herwa.bot.generations.Generations)."""

    directory: Directory
    voice: VoiceTracker
    count: int
    previous: int | None


@dataclass(frozen=True)
class _Held:
    event: str
    fn: Parser
    d: Json
    at: float
    fp: str | None  # set for order-sensitive events


class ShardGate:
    """Between one shard's gateway and its parsers: notes the fingerprints of what it records
    (the anchors it hands over), and while its fleet is on standby holds the guilds' events
    until the cut-over."""

    def __init__(self, fleet: GateFleet, runner: FleetShard, *, standby: bool) -> None:
        self.fleet = fleet
        self.runner = runner
        self.standby = standby
        self.activated = False
        # Per guild in receive order, so the oldest are dropped from the front.
        self.held: dict[int, deque[_Held]] = defaultdict(deque)
        self.waiting: dict[int, tuple[Anchor, float]] = {}  # guild → (anchor, waiting since)
        self.live: set[int] = set()  # guilds replayed and recorded since
        self.tails: dict[int, deque[str]] = {}
        self.last_at: dict[int, float] = {}
        self.initial: set[int] = set()  # guilds of the READY whose GUILD_CREATE is still due
        self.since: float | None = None  # when this session began (its READY)
        self.trimmed_until: float | None = None  # held events received before were dropped

    def wrap(self, event: str, fn: Parser) -> Parser:
        if not self.standby and event not in ORDERED and event not in ("READY", "GUILD_CREATE"):
            # A recording shard (standby never comes later) lets such an event through with no
            # fingerprint to note: the gate would only add a call to every message.
            return fn

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
            client.parse_interaction(d)

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
            for gid, events in list(self.held.items()):
                self.held[gid] = deque(e for e in events if e.fp is None)
        self.since = time.time()

    def _standby_guild(self, raw: Json) -> None:
        d = guild_payload(raw)
        if d is None:
            return
        self.fleet.directory.add_guild(d)
        self.runner.guilds.add(int(d["id"]))

    # -- the standby ----------------------------------------------------------------------
    def trim(self, before: float) -> None:
        """While on standby: drop the held events received before ``before``, which the caller
        keeps at least the hold horizon before the cut-over began (the module docstring says
        why none of them is needed). Each guild's oldest go first, so a call costs one look per
        guild plus one per event dropped."""
        if not self.standby or self.activated:
            return
        dropped = 0
        for gid, events in list(self.held.items()):
            while events and events[0].at < before:
                events.popleft()
                dropped += 1
            if not events:
                del self.held[gid]
        if self.trimmed_until is None or before > self.trimmed_until:
            self.trimmed_until = before
        if dropped:
            metrics.RESHARD_EVENTS.labels("trimmed").inc(dropped)

    @property
    def holding(self) -> int:
        """Events held now."""
        return sum(len(events) for events in self.held.values())

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
            elif (held_from := self._held_from()) is not None and (
                anchor.at < held_from - ANCHOR_MARGIN_S
            ):
                start = 0
                metrics.RESHARD_ANCHORS.labels("before_session").inc()
            else:
                self.waiting[gid] = (anchor, time.time())
                return
        self._go_live(gid, start)

    def _held_from(self) -> float | None:
        """Since when this shard holds every order-sensitive event of its guilds: its session's
        start, or the time it last dropped older ones up to, whichever is later."""
        marks = [t for t in (self.since, self.trimmed_until) if t is not None]
        return max(marks) if marks else None

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
        events = self.held.pop(gid, ())
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
            with replaying(e.at):
                try:
                    e.fn(e.d)
                except BadPayload as exc:
                    rejected(e.event, exc.reason)
                except Exception:
                    rejected(e.event, "malformed")
                    log.exception("unreadable held %s payload skipped", e.event)
