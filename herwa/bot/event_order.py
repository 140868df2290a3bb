"""A guild's events in one order across fleet generations: where one generation stopped
recording and the next goes on (the procedure is :mod:`herwa.bot.generations`).

Discord delivers a guild's events to every session in one order, so the fingerprints of the
last order-sensitive events a shard recorded (its *anchor*) mark an exact place in what a shard
of the next generation received. While a held event is replayed, the time it was received
stands in for "now" (:func:`received`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from herwa.json_types import Json

# Events whose effect depends on their order (and whose rows are keyed by receive time or
# change per-guild state): recorded by exactly one generation, split at the anchor.
ORDERED = frozenset(
    {
        "VOICE_STATE_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_REMOVE",
        "GUILD_CREATE",
        "GUILD_DELETE",
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "PRESENCE_UPDATE",
    }
)
TAIL = 8  # fingerprints per anchor: one alone could repeat (a member muting twice)
# An anchor received at least this long before the new session began cannot be in it (covers
# the skew between the pods' clocks and the gateway's delivery).
ANCHOR_MARGIN_S = 5.0

_replay_at: ContextVar[float | None] = ContextVar("herwa_bot_replay_at", default=None)


def received() -> float:
    """When the event being parsed was received: now, or its receive time while replayed."""
    at = _replay_at.get()
    return time.time() if at is None else at


def received_dt() -> datetime:
    return datetime.fromtimestamp(received(), UTC)


@contextmanager
def replaying(at: float) -> Iterator[None]:
    """While a held event is replayed: :func:`received` answers ``at``, when it arrived."""
    token = _replay_at.set(at)
    try:
        yield
    finally:
        _replay_at.reset(token)


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


@dataclass(frozen=True)
class Anchor:
    tail: list[str]
    at: float  # when the previous generation received its last event (epoch seconds)
