"""Voice sessions: join, move, leave, disconnect → closed ``voice_sessions`` rows.

A session is one user in one channel: a move closes it (``move``) and opens the next, so each
row has one channel and the per-channel minutes are exact. Open sessions are held in memory by
the shard that owns the guild and stored in Postgres (``bot_voice_open``) in the same transaction
as the rows before them and the gateway mark that covers them (:mod:`herwa.bot.shard_state`), so
a pod restart, a shard moving to another pod, or Redis losing its data continues them; a RESUME
replays exactly the voice events after that mark, so no session is opened or closed twice.

Bounds for sessions whose end was never seen:
- on every GUILD_CREATE (a fresh IDENTIFY after a crash, a reconnect, an outage) the guild's
  ``voice_states`` are the truth: a session for a user no longer in that channel is closed
  (``reconcile``) at the last moment the shard was known alive (its last gateway mark), never
  later; users found in voice without a session are opened at that GUILD_CREATE;
- a session open longer than ``voice_session_max_hours`` is closed (``expired``) at
  ``joined_at + max`` — no session is ever counted forever;
- when the bot leaves a guild its sessions close (``guild_left``).

Times are the bot's receive times: Discord's VOICE_STATE_UPDATE carries no timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from herwa.bot import channel_types, metrics
from herwa.bot.capture import Row, voice_session_id
from herwa.bot.directory import Directory
from herwa.json_types import Json


@dataclass
class OpenSession:
    channel_id: int
    joined_at: float  # epoch seconds
    stage: bool
    is_bot: bool
    muted_since: float | None = None
    muted_seconds: float = 0.0

    def dump(self) -> bytes:
        return orjson.dumps(
            [
                self.channel_id,
                self.joined_at,
                self.stage,
                self.is_bot,
                self.muted_since,
                self.muted_seconds,
            ]
        )

    @classmethod
    def load(cls, raw: bytes) -> OpenSession:
        c, j, s, b, ms, m = orjson.loads(raw)
        return cls(int(c), float(j), bool(s), bool(b), ms, float(m))


@dataclass(frozen=True)
class VoiceOp:
    """Store one open session (``session`` None: delete it), in the flush that carries it."""

    shard_id: int
    guild_id: int
    user_id: int
    session: bytes | None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class VoiceTracker:
    def __init__(self, directory: Directory, max_hours: float) -> None:
        self.directory = directory
        self.max_seconds = max_hours * 3600
        self.sessions: dict[int, dict[int, OpenSession]] = {}

    def open_count(self) -> int:
        return sum(len(s) for s in self.sessions.values())

    # -- events ---------------------------------------------------------------------------
    def update(self, d: Json, now: float, shard_id: int) -> tuple[list[Row], list[VoiceOp]]:
        raw_guild = d.get("guild_id")
        if raw_guild is None:
            return [], []
        guild_id = int(raw_guild)
        user_id = int(d["user_id"])
        raw_channel = d.get("channel_id")
        member = d.get("member") or {}
        is_bot = bool((member.get("user") or {}).get("bot"))
        muted = bool(d.get("self_mute") or d.get("mute"))
        guild = self.sessions.setdefault(guild_id, {})
        current = guild.get(user_id)
        rows: list[Row] = []
        if raw_channel is None:
            if current is None:
                return [], []
            rows.append(self._close(guild_id, user_id, current, now, "leave"))
            del guild[user_id]
            return rows, [VoiceOp(shard_id, guild_id, user_id, None)]
        channel_id = int(raw_channel)
        if current is not None and current.channel_id == channel_id:
            if muted and current.muted_since is None:
                current.muted_since = now
            elif not muted and current.muted_since is not None:
                current.muted_seconds += max(0.0, now - current.muted_since)
                current.muted_since = None
            else:
                return [], []
            return [], [VoiceOp(shard_id, guild_id, user_id, current.dump())]
        if current is not None:
            rows.append(self._close(guild_id, user_id, current, now, "move"))
        session = OpenSession(
            channel_id, now, self._is_stage(channel_id), is_bot, now if muted else None
        )
        guild[user_id] = session
        return rows, [VoiceOp(shard_id, guild_id, user_id, session.dump())]

    def reconcile(
        self,
        guild_id: int,
        states: list[Json],
        bots: set[int],
        now: float,
        gone_at: float,
        shard_id: int,
    ) -> tuple[list[Row], list[VoiceOp]]:
        """Make the open sessions of a guild match GUILD_CREATE's ``voice_states``."""
        guild = self.sessions.setdefault(guild_id, {})
        present = {int(s["user_id"]): s for s in states if s.get("channel_id")}
        rows: list[Row] = []
        ops: list[VoiceOp] = []
        for user_id, session in list(guild.items()):
            state = present.get(user_id)
            if state is None or int(state["channel_id"]) != session.channel_id:
                at = min(now, max(gone_at, session.joined_at))
                rows.append(self._close(guild_id, user_id, session, at, "reconcile"))
                del guild[user_id]
                ops.append(VoiceOp(shard_id, guild_id, user_id, None))
        for user_id, state in present.items():
            if user_id in guild:
                continue
            channel_id = int(state["channel_id"])
            muted = bool(state.get("self_mute") or state.get("mute"))
            session = OpenSession(
                channel_id, now, self._is_stage(channel_id), user_id in bots, now if muted else None
            )
            guild[user_id] = session
            ops.append(VoiceOp(shard_id, guild_id, user_id, session.dump()))
        return rows, ops

    def close_guild(
        self, guild_id: int, at: float, reason: str, shard_id: int
    ) -> tuple[list[Row], list[VoiceOp]]:
        guild = self.sessions.pop(guild_id, {})
        rows = [self._close(guild_id, uid, s, at, reason) for uid, s in guild.items()]
        return rows, [VoiceOp(shard_id, guild_id, uid, None) for uid in guild]

    def expire(self, now: float, shard_of: Any) -> tuple[list[Row], list[VoiceOp]]:
        rows: list[Row] = []
        ops: list[VoiceOp] = []
        for guild_id, guild in self.sessions.items():
            for user_id, session in list(guild.items()):
                if now - session.joined_at > self.max_seconds:
                    end = session.joined_at + self.max_seconds
                    rows.append(self._close(guild_id, user_id, session, end, "expired"))
                    del guild[user_id]
                    ops.append(VoiceOp(shard_of(guild_id), guild_id, user_id, None))
        return rows, ops

    def drop_guilds(self, guild_ids: set[int]) -> None:
        """Forget guilds of a shard handed to another pod (Redis keeps their sessions)."""
        for gid in guild_ids:
            self.sessions.pop(gid, None)

    def load(self, guild_id: int, raw: dict[bytes, bytes]) -> None:
        self.sessions[guild_id] = {int(k): OpenSession.load(v) for k, v in raw.items()}

    # -- rows -----------------------------------------------------------------------------
    def _is_stage(self, channel_id: int) -> bool:
        return self.directory.channel_kind(channel_id) == channel_types.STAGE

    def _close(self, guild_id: int, user_id: int, s: OpenSession, at: float, reason: str) -> Row:
        at = max(at, s.joined_at)
        muted = s.muted_seconds
        if s.muted_since is not None:
            muted += max(0.0, at - s.muted_since)
        joined = _dt(s.joined_at)
        metrics.VOICE_CLOSED.labels(reason).inc()
        return (
            voice_session_id(guild_id, user_id, s.channel_id, joined),
            guild_id,
            s.channel_id,
            user_id,
            "stage" if s.stage else "voice",
            joined,
            _dt(at),
            min(muted, at - s.joined_at),
            reason,
            s.is_bot,
        )
