"""What can happen in a simulated guild, each action complete: the world changes, the ledger
records the ground truth, history keeps the message and the gateway dispatches the event.

The random policy that chooses actions is ``_activity.Activity``; tests and the demo call
these actions directly for events they want exactly.
"""

from __future__ import annotations

import random
from typing import Any

from herwa.json_types import Json
from herwa.simulator._app import AppState
from herwa.simulator._gateway import (
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILD_PRESENCES,
    GUILD_VOICE_STATES,
    GUILDS,
    Gateway,
)
from herwa.simulator._history import History
from herwa.simulator._interactions import (
    APPLICATION_COMMAND,
    APPLICATION_COMMAND_AUTOCOMPLETE,
    InteractionRecord,
    InteractionStore,
)
from herwa.simulator._ledger import (
    Ledger,
    MessageRecord,
    PresenceRecord,
    ReactionRecord,
    VoiceRecord,
)
from herwa.simulator._snowflake import SnowflakeFactory, iso_from_ms
from herwa.simulator._world import (
    ADMIN_PERMISSIONS,
    PUBLIC_THREAD,
    Channel,
    Guild,
    Member,
    VoiceState,
    World,
)

_WORDS = (
    "hey",
    "all",
    "lol",
    "gg",
    "nice",
    "when",
    "is",
    "the",
    "raid",
    "tonight",
    "anyone",
    "up",
    "for",
    "a",
    "game",
    "check",
    "this",
    "out",
    "what",
    "do",
    "you",
    "think",
    "about",
    "the",
    "new",
    "patch",
    "i",
    "agree",
    "no",
    "way",
    "that",
    "is",
    "wild",
    "brb",
    "ok",
    "sounds",
    "good",
)


def strip_content(d: Json) -> Json:
    """What a bot without MESSAGE_CONTENT sees of another user's guild message."""
    out = dict(d)
    out["content"] = ""
    out["embeds"] = []
    out["attachments"] = []
    out["components"] = []
    ref = out.get("referenced_message")
    if ref:
        out["referenced_message"] = strip_content(ref)
    return out


class Actions:
    def __init__(
        self,
        *,
        world: World,
        app: AppState,
        gateway: Gateway,
        ledger: Ledger,
        history: History,
        interactions: InteractionStore,
        seed: int,
    ) -> None:
        self.world = world
        self.app = app
        self.gateway = gateway
        self.ledger = ledger
        self.history = history
        self.interactions = interactions
        self.rng = random.Random(seed)
        self.ids = SnowflakeFactory(worker=1)
        # A replay emits past timestamps after live ids exist, and a forward-only clock would
        # stamp them "now": replayed events get their own worker, whose clock is the replay's.
        self.replay_ids = SnowflakeFactory(worker=2)
        self.history_ids = SnowflakeFactory(worker=3)
        # A stream of past events generated on its own (the showcase's newcomers, delivered
        # before the replay) goes forwards through its own weeks: its own worker too.
        self.past_ids = SnowflakeFactory(worker=5)
        self.past_stream = False
        self._voice_sessions: dict[tuple[int, int], VoiceRecord] = {}
        self._recent: dict[int, list[int]] = {}  # channel -> recent live message ids
        # message -> the (member, emoji key) reactions on it now
        self._reactions: dict[int, set[tuple[int, str]]] = {}
        self._author_pools: dict[int, tuple[list[Member], list[float], list[Member]]] = {}
        self._channel_pools: dict[int, tuple[list[Channel], list[Channel]]] = {}
        # (guild, member) -> (status, activity-type bits) last sent; absent: offline.
        self.presences: dict[tuple[int, int], tuple[str, int]] = {}
        # Message texts drawn once from the seeded generator; content carries no signal.
        self._contents = [
            " ".join(self.rng.choices(_WORDS, k=self.rng.randint(2, 12))) for _ in range(512)
        ]

    def new_id(self, at_ms: int) -> int:
        """A snowflake whose timestamp is ``at_ms``, for live and replayed events alike."""
        if self.past_stream:
            return self.past_ids.make(at_ms)
        factory = self.replay_ids if at_ms < self.ids.last_ms else self.ids
        return factory.make(at_ms)

    # -- what the actions keep current ------------------------------------------------------
    def authors(self, guild: Guild) -> tuple[list[Member], list[float], list[Member]]:
        """(humans, their cumulative weights, bots) of the guild's members who post."""
        # Cached per guild (rebuilt after joins and leaves): rebuilding the weighted pool for
        # every message would cost more than the rest of generating it.
        pool = self._author_pools.get(guild.id)
        if pool is None:
            members = [m for m in guild.members.values() if m.weight > 0]
            humans = [m for m in members if not m.user.bot]
            bots = [m for m in members if m.user.bot]
            pool = (humans, cumulative(m.weight for m in humans), bots)
            self._author_pools[guild.id] = pool
        return pool

    def message_channels(self, guild: Guild) -> tuple[list[Channel], list[Channel]]:
        """(text channels, threads) of the guild; rebuilt after a thread is created."""
        chans = self._channel_pools.get(guild.id)
        if chans is None:
            chans = (guild.text_channels(), guild.threads())
            self._channel_pools[guild.id] = chans
        return chans

    def has_recent(self, channel_id: int) -> bool:
        """Whether the channel has a recent message to reply to."""
        return bool(self._recent.get(channel_id))

    def recent_in(self, guild: Guild) -> list[int]:
        """The guild's recent live message ids (the ones edits and deletions pick from)."""
        out: list[int] = []
        for ch in guild.channels.values():
            out.extend(self._recent.get(ch.id, ()))
        return out

    def message_payload(
        self, guild: Guild, channel: Channel, member: Member, kind: str, mid: int, at_ms: int
    ) -> Json:
        rng = self.rng
        content = self._contents[rng.getrandbits(9)]
        d: Json = {
            "id": str(mid),
            "channel_id": str(channel.id),
            "guild_id": str(guild.id),
            "author": member.user.json,
            "member": member.json_without_user,
            "content": content,
            "timestamp": iso_from_ms(at_ms),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if kind == "attachment":
            aid = self.new_id(at_ms)
            name = f"image{aid % 1000}.png"
            d["content"] = content if rng.random() < 0.3 else ""
            d["attachments"] = [
                {
                    "id": str(aid),
                    "filename": name,
                    "size": rng.randint(10_000, 4_000_000),
                    "url": f"https://cdn.discordapp.com/attachments/{channel.id}/{aid}/{name}",
                    "proxy_url": f"https://media.discordapp.net/attachments/{channel.id}/{aid}/{name}",
                    "content_type": "image/png",
                    "width": 800,
                    "height": 600,
                }
            ]
        elif kind == "embed":
            url = f"https://example.com/article/{mid % 100000}"
            d["content"] = url
            d["embeds"] = [
                {
                    "type": "link",
                    "url": url,
                    "title": "An article",
                    "description": "Something worth reading.",
                }
            ]
        elif kind == "sticker":
            d["content"] = ""
            d["sticker_items"] = [{"id": "749054660769218631", "name": "Wave", "format_type": 3}]
        elif kind == "reply":
            ref_id = rng.choice(self._recent[channel.id])
            d["type"] = 19
            d["message_reference"] = {
                "type": 0,
                "message_id": str(ref_id),
                "channel_id": str(channel.id),
                "guild_id": str(guild.id),
            }
            ref = self.history.get(ref_id)
            d["referenced_message"] = (
                {k: v for k, v in ref.items() if k != "referenced_message"} if ref else None
            )
        return d

    def post_message(
        self,
        guild_id: int,
        channel_id: int,
        author_id: int,
        kind: str = "text",
        *,
        at_ms: int,
        historical: bool = False,
    ) -> int:
        guild = self.world.guilds[guild_id]
        channel = guild.channels[channel_id]
        member = guild.members[author_id]
        if kind == "reply" and not self._recent.get(channel_id):
            raise ValueError("a reply needs an earlier message in the channel")
        mid = self.history_ids.make(at_ms) if historical else self.new_id(at_ms)
        d = self.message_payload(guild, channel, member, kind, mid, at_ms)
        self.ledger.message(
            MessageRecord(
                id=mid,
                guild_id=guild_id,
                channel_id=channel_id,
                thread_parent_id=channel.parent_id if channel.type == PUBLIC_THREAD else None,
                author_id=author_id,
                kind=kind,
                is_bot=member.user.bot,
                created_ms=at_ms,
                historical=historical,
            )
        )
        self.history.add(channel_id, d)
        recent = self._recent.setdefault(channel_id, [])
        recent.append(mid)
        if len(recent) > 20:
            del recent[0]
        if not historical:
            self.gateway.dispatch(
                "MESSAGE_CREATE", guild_id, d, intent=GUILD_MESSAGES, key=mid, strip=strip_content
            )
        return mid

    def edit_message(self, message_id: int, *, at_ms: int) -> None:
        rec = self.ledger.messages[message_id]
        stored = self.history.get(message_id)
        if stored is None or rec.deleted:
            raise KeyError(message_id)
        # Discord stamps each edit when it is made, so two edits of one message never share an
        # ``edited_timestamp``; the bot rightly stores an identical one once (a MESSAGE_UPDATE
        # delivered again, an embed unfurl). Events generated in one burst share a millisecond:
        # a second edit of the same message in it is stamped the next millisecond.
        if rec.edited_ms is not None:
            at_ms = max(at_ms, rec.edited_ms + 1)
        stored["content"] = (stored.get("content") or "") + " (edited)"
        stored["edited_timestamp"] = iso_from_ms(at_ms)
        self.ledger.edit(message_id, at_ms)
        self.gateway.dispatch(
            "MESSAGE_UPDATE",
            rec.guild_id,
            stored,
            intent=GUILD_MESSAGES,
            key=message_id,
            strip=strip_content,
        )

    def delete_message(self, message_id: int) -> None:
        rec = self.ledger.messages[message_id]
        if rec.deleted:
            raise KeyError(message_id)
        self.history.remove(rec.channel_id, message_id)
        for ids in self._recent.values():
            if message_id in ids:
                ids.remove(message_id)
        self.ledger.delete(message_id)
        self._reactions.pop(message_id, None)
        d = {
            "id": str(message_id),
            "channel_id": str(rec.channel_id),
            "guild_id": str(rec.guild_id),
        }
        self.gateway.dispatch(
            "MESSAGE_DELETE", rec.guild_id, d, intent=GUILD_MESSAGES, key=message_id
        )

    def reactions_on(self, message_id: int) -> set[tuple[int, str]]:
        """The (member, emoji key) reactions on a message now."""
        return self._reactions.get(message_id, set())

    def reactions_held(self) -> list[tuple[int, int, str]]:
        """Every (message, member, emoji key) reaction now, of members still in the guild."""
        out = []
        for mid, held in sorted(self._reactions.items()):
            members = self.world.guilds[self.ledger.messages[mid].guild_id].members
            out += [(mid, uid, key) for uid, key in sorted(held) if uid in members]
        return out

    def react(self, message_id: int, user_id: int, emoji: Json, *, at_ms: int) -> None:
        """MESSAGE_REACTION_ADD. ``emoji``: ``{"id": None, "name": "👍"}`` or a custom one,
        ``{"id": "…", "name": "…"}``; a member reacts with one emoji once per message."""
        rec = self.ledger.messages[message_id]
        key = str(emoji["id"] or emoji["name"])
        held = self._reactions.setdefault(message_id, set())
        if rec.deleted or (user_id, key) in held:
            raise ValueError("no such message, or already reacted")
        member = self.world.guilds[rec.guild_id].members[user_id]
        held.add((user_id, key))
        d = self._reaction_payload(rec, user_id, emoji)
        d["member"] = member.payload()
        d["message_author_id"] = str(rec.author_id)
        self._reaction_event("MESSAGE_REACTION_ADD", "add", rec, user_id, key, d, at_ms)

    def unreact(self, message_id: int, user_id: int, emoji: Json, *, at_ms: int) -> None:
        """MESSAGE_REACTION_REMOVE: the member takes their reaction back."""
        rec = self.ledger.messages[message_id]
        key = str(emoji["id"] or emoji["name"])
        held = self._reactions.get(message_id, set())
        if (user_id, key) not in held:
            raise ValueError("no such reaction")
        held.discard((user_id, key))
        d = self._reaction_payload(rec, user_id, emoji)
        self._reaction_event("MESSAGE_REACTION_REMOVE", "remove", rec, user_id, key, d, at_ms)

    @staticmethod
    def _reaction_payload(rec: MessageRecord, user_id: int, emoji: Json) -> Json:
        return {
            "user_id": str(user_id),
            "channel_id": str(rec.channel_id),
            "message_id": str(rec.id),
            "guild_id": str(rec.guild_id),
            "emoji": {"id": emoji["id"], "name": emoji["name"], "animated": False},
            "burst": False,
            "type": 0,
        }

    def _reaction_event(
        self, event: str, kind: str, rec: MessageRecord, user_id: int, key: str, d: Json, at: int
    ) -> None:
        channel = rec.thread_parent_id or rec.channel_id
        self.ledger.reaction(ReactionRecord(rec.guild_id, channel, rec.id, user_id, key, kind, at))
        self.gateway.dispatch(event, rec.guild_id, d, intent=GUILD_MESSAGE_REACTIONS, key=rec.id)

    def create_thread(
        self, guild_id: int, parent_id: int, owner_id: int, *, at_ms: int, name: str | None = None
    ) -> int:
        guild = self.world.guilds[guild_id]
        parent = guild.channels[parent_id]
        ch = self.world.add_thread(
            guild, parent, owner_id, at_ms, name or f"thread-{len(guild.threads()) + 1}"
        )
        self._channel_pools.pop(guild_id, None)
        self.ledger.thread(guild_id)
        d = {**ch.payload(), "newly_created": True}
        self.gateway.dispatch("THREAD_CREATE", guild_id, d, intent=GUILDS, key=ch.id)
        return ch.id

    def update_guild(
        self,
        guild_id: int,
        *,
        name: str | None = None,
        icon: str | None = None,
        owner_id: int | None = None,
        raw: Json | None = None,
    ) -> None:
        """GUILD_UPDATE: the server's name, icon or owner changed (None: unchanged). ``raw``
        fields are sent as given, on top, for tests of payloads Discord should never send."""
        guild = self.world.guilds[guild_id]
        if owner_id is not None and owner_id not in guild.members:
            raise KeyError(owner_id)
        guild.name = guild.name if name is None else name
        guild.icon = guild.icon if icon is None else icon
        guild.owner_id = guild.owner_id if owner_id is None else owner_id
        d = {**guild.profile(), **(raw or {})}
        self.gateway.dispatch("GUILD_UPDATE", guild_id, d, intent=GUILDS, key=guild_id)

    def _voice_dispatch(
        self, guild: Guild, uid: int, vs: VoiceState | None, channel_id: int | None
    ) -> None:
        member = guild.members.get(uid)
        if vs is not None:
            d = vs.payload(guild.id, member)
        else:
            d = VoiceState(uid, 0, "").payload(guild.id, member)
        d["channel_id"] = str(channel_id) if channel_id else None
        self.gateway.dispatch("VOICE_STATE_UPDATE", guild.id, d, intent=GUILD_VOICE_STATES, key=uid)

    def voice_join(self, guild_id: int, user_id: int, channel_id: int, *, at_ms: int) -> None:
        guild = self.world.guilds[guild_id]
        if user_id in guild.voice:
            raise ValueError("already in voice")
        vs = VoiceState(user_id, channel_id, f"{self.rng.getrandbits(128):032x}", joined_ms=at_ms)
        guild.voice[user_id] = vs
        rec = VoiceRecord(guild_id, user_id, channel_id, at_ms)
        self._voice_sessions[(guild_id, user_id)] = rec
        self.ledger.voice_sessions.append(rec)
        self.ledger.voice(guild_id, "join")
        self._voice_dispatch(guild, user_id, vs, channel_id)

    def voice_move(self, guild_id: int, user_id: int, channel_id: int, *, at_ms: int) -> None:
        guild = self.world.guilds[guild_id]
        vs = guild.voice[user_id]
        vs.channel_id = channel_id
        self._voice_sessions[(guild_id, user_id)].moves += 1
        self.ledger.voice(guild_id, "move")
        self._voice_dispatch(guild, user_id, vs, channel_id)

    def voice_mute(
        self, guild_id: int, user_id: int, muted: bool, *, at_ms: int, deaf: bool | None = None
    ) -> None:
        guild = self.world.guilds[guild_id]
        vs = guild.voice[user_id]
        vs.self_mute = muted
        if deaf is not None:
            vs.self_deaf = deaf
        self._voice_sessions[(guild_id, user_id)].mute_changes += 1
        self.ledger.voice(guild_id, "mute")
        self._voice_dispatch(guild, user_id, vs, vs.channel_id)

    def voice_leave(
        self, guild_id: int, user_id: int, *, at_ms: int, reason: str = "leave"
    ) -> float:
        guild = self.world.guilds[guild_id]
        vs = guild.voice.pop(user_id)
        rec = self._voice_sessions.pop((guild_id, user_id))
        rec.leave_ms = max(at_ms, rec.join_ms)
        rec.ended_by = reason
        self.ledger.voice(guild_id, reason)
        self._voice_dispatch(guild, user_id, vs, None)
        return rec.seconds

    def member_join(self, guild_id: int, *, at_ms: int) -> int:
        guild = self.world.guilds[guild_id]
        m = self.world.add_member(guild, self.rng, at_ms)
        self.world.engage(guild, m, self.rng, at_ms)
        self._author_pools.pop(guild_id, None)
        self.ledger.member_join(guild_id, m.user.id, at_ms, len(guild.members), is_bot=m.user.bot)
        d = {**m.payload(), "guild_id": str(guild_id)}
        self.gateway.dispatch("GUILD_MEMBER_ADD", guild_id, d, intent=GUILD_MEMBERS, key=m.user.id)
        return m.user.id

    def member_leave(self, guild_id: int, user_id: int, *, at_ms: int) -> None:
        guild = self.world.guilds[guild_id]
        if user_id in guild.voice:
            self.voice_leave(guild_id, user_id, at_ms=at_ms, reason="disconnect")
        m = guild.members.pop(user_id)
        self._author_pools.pop(guild_id, None)
        self.ledger.member_leave(guild_id, user_id, at_ms, len(guild.members), is_bot=m.user.bot)
        d = {"guild_id": str(guild_id), "user": m.user.payload()}
        self.gateway.dispatch("GUILD_MEMBER_REMOVE", guild_id, d, intent=GUILD_MEMBERS, key=user_id)

    def presence_update(
        self, guild_id: int, user_id: int, status: str, activity_types: int, *, at_ms: int
    ) -> bool:
        """A member's PRESENCE_UPDATE: ``activity_types`` is the set of activity types as bits
        (bit n: Discord's type n). Returns whether it is a transition (the status or the set of
        types changed), which is what a bot records; the ledger keeps every update."""
        key = (guild_id, user_id)
        before = self.presences.get(key, ("offline", 0))
        state = (status, activity_types)
        if status == "offline":
            self.presences.pop(key, None)
        else:
            self.presences[key] = state
        transition = state != before
        self.ledger.presence(
            PresenceRecord(guild_id, user_id, status, activity_types, at_ms, transition)
        )
        activities = [
            {"type": t, "name": f"activity {self.rng.randrange(1000)}", "created_at": at_ms}
            for t in range(6)
            if activity_types >> t & 1
        ]
        d: Json = {
            "user": {"id": str(user_id)},
            "guild_id": str(guild_id),
            "status": status,
            "activities": activities,
            "client_status": {} if status == "offline" else {"desktop": status},
        }
        self.gateway.dispatch("PRESENCE_UPDATE", guild_id, d, intent=GUILD_PRESENCES, key=user_id)
        return transition

    def invoke_command(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: list[Json],
        *,
        at_ms: int,
        permissions: str = ADMIN_PERMISSIONS,
        resolved: Json | None = None,
        focused: Json | None = None,
    ) -> InteractionRecord:
        """A slash command, or with ``focused`` (the registered option being typed in) an
        autocomplete interaction for it, which is no invocation: the ledger does not count it."""
        guild = self.world.guilds[guild_id]
        channel = guild.channels[channel_id]
        member = guild.members[user_id]
        cmd = self.app.find_command(name, guild_id)
        iid = self.new_id(at_ms)
        kind = APPLICATION_COMMAND if focused is None else APPLICATION_COMMAND_AUTOCOMPLETE
        rec = InteractionRecord(
            iid,
            self.interactions.new_token(),
            guild_id,
            channel_id,
            user_id,
            name,
            options,
            user=member.user.payload(),
            type=kind,
            focused=focused,
        )
        self.interactions.add(rec)
        if focused is None:
            self.ledger.command(guild_id, name)
        d: Json = {
            "id": str(iid),
            "application_id": str(self.app.application_id),
            "type": kind,
            "data": {
                "id": str(cmd["id"]) if cmd else str(self.new_id(at_ms)),
                "name": name,
                "type": int(cmd.get("type", 1)) if cmd else 1,
                "options": options,
                "guild_id": str(guild_id),
                **({"resolved": resolved} if resolved else {}),
            },
            "guild_id": str(guild_id),
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "guild_locale": "en-US",
            "channel_id": str(channel_id),
            "channel": {**channel.payload()},
            "member": {**member.payload(), "permissions": permissions},
            "token": rec.token,
            "version": 1,
            "app_permissions": ADMIN_PERMISSIONS,
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild_id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        self.gateway.dispatch("INTERACTION_CREATE", guild_id, d, intent=0, key=iid)
        return rec


def cumulative(values: Any) -> list[float]:
    out: list[float] = []
    total = 0.0
    for v in values:
        total += float(v)
        out.append(total)
    return out
