"""Ground truth: everything the simulator emitted, so tests can assert exact arrival.

Counts are kept per guild and event family; voice seconds are measured on the simulator's own
clock between the join and the leave it emitted. Deliveries say which session got an event at
which sequence number and whether that session was connected at that moment, so a test can tell
"delivered to a live shard" from "buffered while the shard was down" (and later replayed).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from herwa.json_types import Json


@dataclass
class MessageRecord:
    id: int
    guild_id: int
    channel_id: int
    thread_parent_id: int | None
    author_id: int
    kind: str
    is_bot: bool
    created_ms: int
    historical: bool = False
    deleted: bool = False
    edits: int = 0
    edited_ms: int | None = None  # the last edit's time (its ``edited_timestamp``)


@dataclass
class VoiceRecord:
    guild_id: int
    user_id: int
    channel_id: int
    join_ms: int
    leave_ms: int | None = None
    moves: int = 0
    mute_changes: int = 0
    ended_by: str | None = None  # "leave" or "disconnect"

    @property
    def seconds(self) -> float:
        return 0.0 if self.leave_ms is None else (self.leave_ms - self.join_ms) / 1000


@dataclass
class MemberEventRecord:
    guild_id: int
    user_id: int
    event: str  # "join" or "leave"
    at_ms: int
    is_bot: bool


@dataclass
class ReactionRecord:
    guild_id: int
    channel_id: int  # as the bot records it: a thread's parent channel
    message_id: int
    user_id: int
    emoji: str  # a custom emoji's id, else the unicode emoji
    event: str  # "add" or "remove"
    at_ms: int


@dataclass
class PresenceRecord:
    guild_id: int
    user_id: int
    status: str  # online, idle, dnd, offline
    activity_types: int  # bit n: an activity of Discord's type n
    at_ms: int
    # The status or the set of activity types changed since the member's last update (an
    # unknown member is offline): what a bot recording transitions stores.
    transition: bool


@dataclass
class Delivery:
    event: str
    key: int
    guild_id: int | None
    session_id: str
    shard_id: int
    seq: int
    connected: bool


@dataclass
class GuildLedger:
    messages: Counter[str] = field(default_factory=Counter)
    bot_messages: int = 0
    by_channel: Counter[int] = field(default_factory=Counter)
    by_author: Counter[int] = field(default_factory=Counter)
    edits: int = 0
    deletes: int = 0
    threads_created: int = 0
    joins: int = 0
    leaves: int = 0
    daily_member_counts: dict[str, int] = field(default_factory=dict)
    commands: Counter[str] = field(default_factory=Counter)
    voice_events: Counter[str] = field(default_factory=Counter)
    reactions_added: int = 0
    reactions_removed: int = 0
    presence_updates: int = 0
    presence_transitions: int = 0


class Ledger:
    def __init__(self, *, record_deliveries: bool = True) -> None:
        self.record_deliveries = record_deliveries
        self.guilds: defaultdict[int, GuildLedger] = defaultdict(GuildLedger)
        self.messages: dict[int, MessageRecord] = {}
        self.voice_sessions: list[VoiceRecord] = []
        self.member_events: list[MemberEventRecord] = []
        self.reactions: list[ReactionRecord] = []
        self.presences: list[PresenceRecord] = []
        self.deliveries: list[Delivery] = []
        # Events for which no session of any shard existed: lost to the gateway (backfill only).
        self.undelivered: list[tuple[str, int, int | None]] = []
        self.events_emitted: Counter[str] = Counter()
        self.identify_refused: Counter[str] = Counter()

    # -- recording --------------------------------------------------------------------------
    def message(self, rec: MessageRecord) -> None:
        self.messages[rec.id] = rec
        g = self.guilds[rec.guild_id]
        g.messages[rec.kind] += 1
        g.by_channel[rec.channel_id] += 1
        g.by_author[rec.author_id] += 1
        if rec.is_bot:
            g.bot_messages += 1

    def edit(self, message_id: int, at_ms: int) -> None:
        rec = self.messages[message_id]
        rec.edits += 1
        rec.edited_ms = at_ms
        self.guilds[rec.guild_id].edits += 1

    def delete(self, message_id: int) -> None:
        rec = self.messages[message_id]
        rec.deleted = True
        self.guilds[rec.guild_id].deletes += 1

    def member_join(
        self, guild_id: int, user_id: int, at_ms: int, count: int, *, is_bot: bool
    ) -> None:
        g = self.guilds[guild_id]
        g.joins += 1
        self.member_events.append(MemberEventRecord(guild_id, user_id, "join", at_ms, is_bot))
        self._member_count(g, at_ms, count)

    def member_leave(
        self, guild_id: int, user_id: int, at_ms: int, count: int, *, is_bot: bool
    ) -> None:
        g = self.guilds[guild_id]
        g.leaves += 1
        self.member_events.append(MemberEventRecord(guild_id, user_id, "leave", at_ms, is_bot))
        self._member_count(g, at_ms, count)

    def member_count(self, guild_id: int, at_ms: int, count: int) -> None:
        self._member_count(self.guilds[guild_id], at_ms, count)

    @staticmethod
    def _member_count(g: GuildLedger, at_ms: int, count: int) -> None:
        # The count at the end of each UTC day: the last value recorded that day.
        day = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).date().isoformat()
        g.daily_member_counts[day] = count

    def reaction(self, rec: ReactionRecord) -> None:
        self.reactions.append(rec)
        g = self.guilds[rec.guild_id]
        if rec.event == "add":
            g.reactions_added += 1
        else:
            g.reactions_removed += 1

    def command(self, guild_id: int, name: str) -> None:
        self.guilds[guild_id].commands[name] += 1

    def thread(self, guild_id: int) -> None:
        self.guilds[guild_id].threads_created += 1

    def voice(self, guild_id: int, action: str) -> None:
        self.guilds[guild_id].voice_events[action] += 1

    def presence(self, rec: PresenceRecord) -> None:
        self.presences.append(rec)
        g = self.guilds[rec.guild_id]
        g.presence_updates += 1
        g.presence_transitions += rec.transition

    def delivered(self, d: Delivery) -> None:
        self.deliveries.append(d)

    # -- queries ----------------------------------------------------------------------------
    def presence_rows(self, granted: Iterable[int]) -> Counter[tuple[int, int, str, int]]:
        """(guild, member, status, activity-type bits) → rows a bot recording presence
        transitions stores, given the guilds whose tier grants it: none elsewhere."""
        guilds = set(granted)
        return Counter(
            (p.guild_id, p.user_id, p.status, p.activity_types)
            for p in self.presences
            if p.transition and p.guild_id in guilds
        )

    def voice_totals(self, guild_id: int, *, user_id: int | None = None) -> tuple[int, float]:
        """Closed sessions and their exact total seconds for a guild (optionally one user)."""
        n = 0
        total = 0.0
        for v in self.voice_sessions:
            if (
                v.guild_id == guild_id
                and v.leave_ms is not None
                and (user_id is None or v.user_id == user_id)
            ):
                n += 1
                total += v.seconds
        return n, total

    def messages_in(
        self, guild_id: int, *, channel_id: int | None = None, include_deleted: bool = True
    ) -> list[MessageRecord]:
        return [
            m
            for m in self.messages.values()
            if m.guild_id == guild_id
            and (channel_id is None or m.channel_id == channel_id)
            and (include_deleted or not m.deleted)
        ]

    def deliveries_for(
        self, *, session_id: str | None = None, shard_id: int | None = None
    ) -> list[Delivery]:
        return [
            d
            for d in self.deliveries
            if (session_id is None or d.session_id == session_id)
            and (shard_id is None or d.shard_id == shard_id)
        ]

    def summary(self) -> Json:
        guilds: Json = {}
        for gid, g in sorted(self.guilds.items()):
            sessions, seconds = self.voice_totals(gid)
            open_sessions = sum(
                1 for v in self.voice_sessions if v.guild_id == gid and v.leave_ms is None
            )
            guilds[str(gid)] = {
                "messages": {
                    "total": sum(g.messages.values()),
                    "by_kind": dict(sorted(g.messages.items())),
                    "bot": g.bot_messages,
                    "by_channel": {str(k): v for k, v in sorted(g.by_channel.items())},
                    "by_author": {str(k): v for k, v in sorted(g.by_author.items())},
                    "edits": g.edits,
                    "deletes": g.deletes,
                },
                "threads_created": g.threads_created,
                "voice": {
                    "sessions": sessions,
                    "seconds": round(seconds, 3),
                    "open": open_sessions,
                    "events": dict(sorted(g.voice_events.items())),
                },
                "members": {
                    "joins": g.joins,
                    "leaves": g.leaves,
                    "daily_counts": dict(sorted(g.daily_member_counts.items())),
                },
                "commands": dict(sorted(g.commands.items())),
                "reactions": {"added": g.reactions_added, "removed": g.reactions_removed},
                "presence": {
                    "updates": g.presence_updates,
                    "transitions": g.presence_transitions,
                },
            }
        return {
            "guilds": guilds,
            "events_emitted": dict(sorted(self.events_emitted.items())),
            "deliveries": len(self.deliveries),
            "undelivered": len(self.undelivered),
            "identify_refused": dict(self.identify_refused),
        }

    def message_rows(self, guild_id: int | None = None) -> list[Json]:
        return [
            {
                k: (str(v) if k.endswith("id") and isinstance(v, int) else v)
                for k, v in asdict(m).items()
            }
            for m in self.messages.values()
            if guild_id is None or m.guild_id == guild_id
        ]

    def delivery_rows(
        self, *, session_id: str | None = None, shard_id: int | None = None
    ) -> list[Json]:
        return [asdict(d) for d in self.deliveries_for(session_id=session_id, shard_id=shard_id)]
