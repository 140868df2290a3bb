"""The scenario engine: what happens in the simulated guilds, and when.

Every action updates the world, records ground truth in the ledger, stores messages for history
and dispatches the gateway event. The random policy draws from one seeded ``random.Random`` so
that the same seed and the same sequence of timestamps give the same ledger.
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herwa.simulator._app import AppState
from herwa.simulator._gateway import (
    GUILD_MEMBERS,
    GUILD_MESSAGES,
    GUILD_VOICE_STATES,
    GUILDS,
    Gateway,
)
from herwa.simulator._history import History
from herwa.simulator._interactions import InteractionRecord, InteractionStore
from herwa.simulator._ledger import Ledger, MessageRecord, VoiceRecord
from herwa.simulator._snowflake import SnowflakeFactory, iso_from_ms
from herwa.simulator._world import (
    ADMIN_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    PUBLIC_THREAD,
    Channel,
    Guild,
    Member,
    VoiceState,
    World,
)

Json = dict[str, Any]

KINDS = ("text", "attachment", "embed", "sticker", "reply")
# What step() can produce; "join" and "leave" are the two halves of "member" on their own.
FAMILIES = ("message", "edit", "delete", "voice", "member", "join", "leave", "thread", "command")

# Relative activity per local hour (0..23): quiet nights, a lunch bump, evening peak.
DIURNAL = (
    0.35,
    0.22,
    0.14,
    0.09,
    0.07,
    0.08,
    0.15,
    0.3,
    0.5,
    0.65,
    0.75,
    0.85,
    0.95,
    0.9,
    0.85,
    0.85,
    0.9,
    1.0,
    1.15,
    1.3,
    1.4,
    1.35,
    1.1,
    0.7,
)
# Monday..Sunday: weekends are busier for community servers.
WEEKLY = (0.9, 0.9, 0.95, 0.95, 1.05, 1.25, 1.2)

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


@dataclass(frozen=True)
class ScenarioConfig:
    """The random policy. Weights are relative, not probabilities."""

    seed: int = 1
    families: dict[str, float] = field(
        default_factory=lambda: {
            "message": 0.82,
            "edit": 0.03,
            "delete": 0.02,
            "voice": 0.07,
            "member": 0.03,
            "thread": 0.01,
            "command": 0.02,
        }
    )
    kinds: dict[str, float] = field(
        default_factory=lambda: {
            "text": 0.78,
            "attachment": 0.08,
            "embed": 0.05,
            "sticker": 0.04,
            "reply": 0.05,
        }
    )
    bot_author_share: float = 0.05
    thread_message_share: float = 0.1
    max_cohort: int = 5
    # Random traffic never invokes these: a member's opt-out or erasure changes what the bot
    # must have counted, which the ledger does not model. invoke_command still reaches them.
    random_command_skip: tuple[str, ...] = ("privacy",)


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


class Activity:
    def __init__(
        self,
        *,
        world: World,
        app: AppState,
        gateway: Gateway,
        ledger: Ledger,
        history: History,
        interactions: InteractionStore,
        config: ScenarioConfig,
    ) -> None:
        self.world = world
        self.app = app
        self.gateway = gateway
        self.ledger = ledger
        self.history = history
        self.interactions = interactions
        self.config = config
        self.rng = random.Random(config.seed)
        self.ids = SnowflakeFactory(worker=1)
        # A replay emits past timestamps after live ids exist, and a forward-only clock would
        # stamp them "now": replayed events get their own worker, whose clock is the replay's.
        self.replay_ids = SnowflakeFactory(worker=2)
        self.history_ids = SnowflakeFactory(worker=3)
        self._voice_sessions: dict[tuple[int, int], VoiceRecord] = {}
        self._zones = {g.id: zoneinfo.ZoneInfo(g.timezone) for g in world.guilds.values()}
        self._weight_hour = -1
        self._guild_list = list(world.guilds.values())
        self._guild_cum: list[float] = []
        fam = config.families
        self._families = list(fam)
        self._family_cum = _cumulative(fam.values())
        self._kinds = list(config.kinds)
        self._kind_cum = _cumulative(config.kinds.values())
        self._recent: dict[int, list[int]] = {}  # channel -> recent live message ids
        self._author_pools: dict[int, tuple[list[Member], list[float], list[Member]]] = {}
        self._channel_pools: dict[int, tuple[list[Channel], list[Channel]]] = {}
        # Command options have a generator of their own, so that the events around them stay
        # what the seed always gave.
        self._option_rng = random.Random(config.seed + 1)
        # Message texts drawn once from the seeded generator; content carries no signal.
        self._contents = [
            " ".join(self.rng.choices(_WORDS, k=self.rng.randint(2, 12))) for _ in range(512)
        ]
        self.on_emit: Callable[[str], None] | None = None

    # -- random policy ----------------------------------------------------------------------
    def local_weight(self, guild: Guild, at_ms: int) -> float:
        local = dt.datetime.fromtimestamp(at_ms / 1000, tz=self._zones[guild.id])
        return guild.activity * DIURNAL[local.hour] * WEEKLY[local.weekday()]

    def pick_guild(self, at_ms: int) -> Guild:
        hour = at_ms // 3_600_000
        if hour != self._weight_hour:
            self._weight_hour = hour
            self._guild_cum = _cumulative(self.local_weight(g, at_ms) for g in self._guild_list)
        return self.rng.choices(self._guild_list, cum_weights=self._guild_cum)[0]

    def new_id(self, at_ms: int) -> int:
        """A snowflake whose timestamp is ``at_ms``, for live and replayed events alike."""
        factory = self.replay_ids if at_ms < self.ids.last_ms else self.ids
        return factory.make(at_ms)

    def step(self, at_ms: int, *, family: str | None = None) -> str:
        """One random event at ``at_ms``; returns the family actually produced."""
        rng = self.rng
        guild = self.pick_guild(at_ms)
        fam = family or rng.choices(self._families, cum_weights=self._family_cum)[0]
        if fam == "edit" and self._edit_random(guild, at_ms):
            return fam
        if fam == "delete" and self._delete_random(guild, at_ms):
            return fam
        if fam == "voice":
            self._voice_random(guild, at_ms)
            return fam
        if fam in ("member", "join", "leave"):
            self._member_random(guild, at_ms, fam)
            return fam
        if fam == "thread" and guild.text_channels():
            parent = rng.choice(guild.text_channels())
            owner = self._pick_author(guild, humans_only=True)
            self.create_thread(guild.id, parent.id, owner.user.id, at_ms=at_ms)
            return fam
        if fam == "command":
            skip = self.config.random_command_skip
            names = [n for n in self.app.command_names(guild.id) if n not in skip]
            if names and guild.text_channels():
                user = self._pick_author(guild, humans_only=True)
                name = rng.choice(names)
                command = self.app.find_command(name, guild.id)
                invocation = build_invocation(command or {}, guild, self._option_rng)
                if invocation is not None:
                    # An ordinary member: the @everyone permissions, not Manage Server.
                    self.invoke_command(
                        guild.id,
                        rng.choice(guild.text_channels()).id,
                        user.user.id,
                        name,
                        invocation.options,
                        at_ms=at_ms,
                        permissions=EVERYONE_PERMISSIONS,
                        resolved=invocation.resolved,
                    )
                    return fam
        self._message_random(guild, at_ms)
        return "message"

    def _authors(self, guild: Guild) -> tuple[list[Member], list[float], list[Member]]:
        # Cached per guild (rebuilt after joins and leaves): rebuilding the weighted pool for
        # every message would cost more than the rest of generating it.
        pool = self._author_pools.get(guild.id)
        if pool is None:
            members = [m for m in guild.members.values() if m.weight > 0]
            humans = [m for m in members if not m.user.bot]
            bots = [m for m in members if m.user.bot]
            pool = (humans, _cumulative(m.weight for m in humans), bots)
            self._author_pools[guild.id] = pool
        return pool

    def _pick_author(self, guild: Guild, *, humans_only: bool = False) -> Member:
        humans, cum, bots = self._authors(guild)
        if not humans_only and bots and self.rng.random() < self.config.bot_author_share:
            return self.rng.choice(bots)
        return self.rng.choices(humans, cum_weights=cum)[0]

    def _message_channels(self, guild: Guild) -> tuple[list[Channel], list[Channel]]:
        chans = self._channel_pools.get(guild.id)
        if chans is None:
            chans = (guild.text_channels(), guild.threads())
            self._channel_pools[guild.id] = chans
        return chans

    def _message_random(self, guild: Guild, at_ms: int) -> None:
        rng = self.rng
        texts, threads = self._message_channels(guild)
        if threads and rng.random() < self.config.thread_message_share:
            channel = rng.choice(threads)
        else:
            channel = rng.choice(texts)
        author = self._pick_author(guild)
        kind = rng.choices(self._kinds, cum_weights=self._kind_cum)[0]
        if kind == "reply" and not self._recent.get(channel.id):
            kind = "text"
        self.post_message(guild.id, channel.id, author.user.id, kind, at_ms=at_ms)

    def _edit_random(self, guild: Guild, at_ms: int) -> bool:
        recent = self._recent_in(guild)
        if not recent:
            return False
        self.edit_message(self.rng.choice(recent), at_ms=at_ms)
        return True

    def _delete_random(self, guild: Guild, at_ms: int) -> bool:
        recent = self._recent_in(guild)
        if not recent:
            return False
        self.delete_message(self.rng.choice(recent))
        return True

    def _recent_in(self, guild: Guild) -> list[int]:
        out: list[int] = []
        for ch in guild.channels.values():
            out.extend(self._recent.get(ch.id, ()))
        return out

    def _voice_random(self, guild: Guild, at_ms: int) -> None:
        rng = self.rng
        channels = guild.voice_channels()
        if not channels:
            return
        in_voice = list(guild.voice)
        # Keep roughly a tenth of the members in voice: join more often when few are in.
        want_join = len(in_voice) < max(1, len(guild.members) // 10) or rng.random() < 0.3
        if want_join:
            candidates = [
                m
                for uid, m in guild.members.items()
                if uid not in guild.voice and uid != self.world.bot_user.id
            ]
            if candidates:
                m = rng.choices(candidates, weights=[c.weight for c in candidates])[0]
                self.voice_join(guild.id, m.user.id, rng.choice(channels).id, at_ms=at_ms)
                return
        if not in_voice:
            return
        uid = rng.choice(in_voice)
        r = rng.random()
        if r < 0.2 and len(channels) > 1:
            current = guild.voice[uid].channel_id
            target = rng.choice([c for c in channels if c.id != current])
            self.voice_move(guild.id, uid, target.id, at_ms=at_ms)
        elif r < 0.45:
            self.voice_mute(guild.id, uid, not guild.voice[uid].self_mute, at_ms=at_ms)
        elif r < 0.55:
            self.voice_leave(guild.id, uid, at_ms=at_ms, reason="disconnect")
        else:
            self.voice_leave(guild.id, uid, at_ms=at_ms)

    def _member_random(self, guild: Guild, at_ms: int, family: str) -> None:
        """``family``: "member" (joins and leaves), "join" or "leave" (only those)."""
        rng = self.rng
        # Cohorts: joins and leaves come in small waves (an invite link shared, a raid, a purge).
        cohort = min(self.config.max_cohort, int(rng.paretovariate(1.5)))
        if family == "join" or (family == "member" and rng.random() < 0.6):
            for _ in range(cohort):
                self.member_join(guild.id, at_ms=at_ms)
        else:
            leavers = [
                uid
                for uid, m in guild.members.items()
                if not m.user.bot and uid != guild.owner_id and uid not in guild.voice
            ]
            for uid in rng.sample(leavers, min(cohort, max(0, len(leavers) - 5))):
                self.member_leave(guild.id, uid, at_ms=at_ms)

    # -- actions ----------------------------------------------------------------------------
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
        stored["content"] = (stored.get("content") or "") + " (edited)"
        stored["edited_timestamp"] = iso_from_ms(at_ms)
        self.ledger.edit(message_id)
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
        d = {
            "id": str(message_id),
            "channel_id": str(rec.channel_id),
            "guild_id": str(rec.guild_id),
        }
        self.gateway.dispatch(
            "MESSAGE_DELETE", rec.guild_id, d, intent=GUILD_MESSAGES, key=message_id
        )

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
    ) -> InteractionRecord:
        guild = self.world.guilds[guild_id]
        channel = guild.channels[channel_id]
        member = guild.members[user_id]
        cmd = self.app.find_command(name, guild_id)
        iid = self.new_id(at_ms)
        rec = InteractionRecord(
            iid, self.interactions.new_token(), guild_id, channel_id, user_id, name, options
        )
        self.interactions.add(rec)
        self.ledger.command(guild_id, name)
        d: Json = {
            "id": str(iid),
            "application_id": str(self.app.application_id),
            "type": 2,
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


# Application command option types (https://discord.com/developers/docs/interactions/
# application-commands#application-command-object-application-command-option-type).
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = range(3, 12)


@dataclass(frozen=True)
class Invocation:
    options: list[Json]
    resolved: Json


def build_invocation(command: Json, guild: Guild, rng: random.Random) -> Invocation | None:
    """Options for one invocation of a registered command, shaped as Discord builds them from
    the registration: one subcommand (inside its group) when the command has any, every
    required option and some optional ones, values of the declared type within the declared
    choices, ranges and lengths, and users, channels and roles in ``resolved``. None when the
    command needs an option the simulator cannot supply (an attachment)."""
    resolved: Json = {}
    options = command.get("options") or []
    subs = [o for o in options if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)]
    if not subs:
        leaf = _leaf_options(options, guild, rng, resolved)
        return None if leaf is None else Invocation(leaf, resolved)
    sub = rng.choice(subs)
    if sub["type"] == SUB_COMMAND_GROUP:
        inner = rng.choice(sub.get("options") or [{"type": SUB_COMMAND, "name": "?"}])
        leaf = _leaf_options(inner.get("options") or [], guild, rng, resolved)
        if leaf is None:
            return None
        nested = [{"type": SUB_COMMAND, "name": inner["name"], "options": leaf}]
        group = {"type": SUB_COMMAND_GROUP, "name": sub["name"], "options": nested}
        return Invocation([group], resolved)
    leaf = _leaf_options(sub.get("options") or [], guild, rng, resolved)
    if leaf is None:
        return None
    return Invocation([{"type": SUB_COMMAND, "name": sub["name"], "options": leaf}], resolved)


def _leaf_options(
    declared: list[Json], guild: Guild, rng: random.Random, resolved: Json
) -> list[Json] | None:
    out: list[Json] = []
    for option in declared:
        if not option.get("required") and rng.random() < 0.5:
            continue
        value = _option_value(option, guild, rng, resolved)
        if value is None:
            if option.get("required"):
                return None
            continue
        out.append({"type": option["type"], "name": option["name"], "value": value})
    return out


def _option_value(option: Json, guild: Guild, rng: random.Random, resolved: Json) -> Any:
    kind = option["type"]
    if option.get("choices"):
        return rng.choice(option["choices"])["value"]
    if kind == STRING:
        low = int(option.get("min_length") or 1)
        high = max(low, min(int(option.get("max_length") or 24), 24))
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(low, high)))
    if kind in (INTEGER, NUMBER):
        low = option.get("min_value", 1)
        high = option.get("max_value", max(low, 1) + 30)
        return rng.randint(int(low), int(high)) if kind == INTEGER else rng.uniform(low, high)
    if kind == BOOLEAN:
        return rng.random() < 0.5
    if kind in (USER, MENTIONABLE):
        member = rng.choice(list(guild.members.values()))
        resolved.setdefault("users", {})[str(member.user.id)] = member.user.payload()
        resolved.setdefault("members", {})[str(member.user.id)] = {
            **member.payload(with_user=False),
            "permissions": EVERYONE_PERMISSIONS,
        }
        return str(member.user.id)
    if kind == CHANNEL:
        wanted = option.get("channel_types")
        channels = [c for c in guild.channels.values() if not wanted or c.type in wanted]
        if not channels:
            return None
        channel = rng.choice(channels)
        resolved.setdefault("channels", {})[str(channel.id)] = {
            "id": str(channel.id),
            "name": channel.name,
            "type": channel.type,
            "permissions": EVERYONE_PERMISSIONS,
            **({"parent_id": str(channel.parent_id)} if channel.parent_id else {}),
        }
        return str(channel.id)
    if kind == ROLE:
        # Every guild has its @everyone role, whose id is the guild's.
        resolved.setdefault("roles", {})[str(guild.id)] = {
            "id": str(guild.id),
            "name": "@everyone",
            "permissions": EVERYONE_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return str(guild.id)
    return None  # ATTACHMENT, or a type this simulator does not know


def _cumulative(values: Any) -> list[float]:
    out: list[float] = []
    total = 0.0
    for v in values:
        total += float(v)
        out.append(total)
    return out
