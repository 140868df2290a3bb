"""The scenario engine's random policy: what happens in the simulated guilds, and when.

Each step picks a guild by its local time of day, an event family by the scenario's weights and
then the event's details, and carries it out with one of the actions of ``_actions.Actions``.
Every draw comes from one seeded ``random.Random`` so that the same seed and the same sequence
of timestamps give the same ledger.
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field

from herwa.json_types import Json
from herwa.simulator._actions import Actions, cumulative
from herwa.simulator._app import AppState
from herwa.simulator._command_options import build_invocation
from herwa.simulator._gateway import Gateway
from herwa.simulator._history import History
from herwa.simulator._interactions import InteractionStore
from herwa.simulator._ledger import Ledger
from herwa.simulator._world import EVERYONE_PERMISSIONS, TEXT, Channel, Guild, Member, World

KINDS = ("text", "attachment", "embed", "sticker", "reply")
# What step() can produce; "join" and "leave" are the two halves of "member" on their own;
# "unreact" takes back a reaction given anywhere (the "reaction" family also adds them).
FAMILIES = (
    "message",
    "edit",
    "delete",
    "voice",
    "member",
    "join",
    "leave",
    "thread",
    "command",
    "reaction",
    "unreact",
    "presence",
)
# Unicode emoji members react with; each guild has custom ones too (``custom_emoji``).
UNICODE_EMOJI = ("👍", "❤️", "😂", "🎉", "🔥", "👀", "🇫🇷", "👨‍👩‍👧")
CUSTOM_EMOJI = 2
# Of the reaction events, the share that takes a reaction back (when there is one to take).
REACTION_REMOVE_SHARE = 0.25
# A presence draw: the member's next status, and how many kinds of activity they then have.
PRESENCE_STATUSES = {"online": 0.5, "idle": 0.2, "dnd": 0.1, "offline": 0.2}

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
            "reaction": 0.04,
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
    # Of the presence updates of a member who is not offline, the share that changes neither
    # status nor activity types (a new song, a game's details): Discord sends these, and a bot
    # recording transitions stores none — unless the shard has just moved to another process,
    # which starts without its members' last presence: so none by default, for the ledger to
    # hold whatever the shards do. Presence is not in the default families: only servers
    # whose tier grants it are recorded, so a scenario asks for it.
    presence_repeat_share: float = 0.0
    # Random traffic never invokes these: a member's opt-out or erasure changes what the bot
    # must have counted, which the ledger does not model. invoke_command still reaches them.
    random_command_skip: tuple[str, ...] = ("privacy",)


class Activity(Actions):
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
        super().__init__(
            world=world,
            app=app,
            gateway=gateway,
            ledger=ledger,
            history=history,
            interactions=interactions,
            seed=config.seed,
        )
        self.config = config
        self._zones = {g.id: zoneinfo.ZoneInfo(g.timezone) for g in world.guilds.values()}
        self._weight_hour = -1
        self._guild_list = list(world.guilds.values())
        self._guild_cum: list[float] = []
        # Channel history of the guilds besides the showcase, which has a history of its own
        # (``_showcase.showcase_history``) with its own daily and weekly rhythm.
        self._history_hour = -1
        self._history_list = [g for g in self._guild_list if g is not world.showcase]
        self._history_cum: list[float] = []
        fam = config.families
        self._families = list(fam)
        self._family_cum = cumulative(fam.values())
        self._kinds = list(config.kinds)
        self._kind_cum = cumulative(config.kinds.values())
        # Command options have a generator of their own, so that the events around them stay
        # what the seed always gave.
        self._option_rng = random.Random(config.seed + 1)
        self.on_emit: Callable[[str], None] | None = None

    # -- random policy ----------------------------------------------------------------------
    def local_weight(self, guild: Guild, at_ms: int) -> float:
        local = dt.datetime.fromtimestamp(at_ms / 1000, tz=self._zones[guild.id])
        return guild.activity * DIURNAL[local.hour] * WEEKLY[local.weekday()]

    def pick_guild(self, at_ms: int) -> Guild:
        hour = at_ms // 3_600_000
        if hour != self._weight_hour:
            self._weight_hour = hour
            self._guild_cum = cumulative(self.local_weight(g, at_ms) for g in self._guild_list)
        return self.rng.choices(self._guild_list, cum_weights=self._guild_cum)[0]

    def _pick_history_guild(self, at_ms: int) -> Guild:
        hour = at_ms // 3_600_000
        if hour != self._history_hour:
            self._history_hour = hour
            self._history_cum = cumulative(self.local_weight(g, at_ms) for g in self._history_list)
        return self.rng.choices(self._history_list, cum_weights=self._history_cum)[0]

    def step(self, at_ms: int, *, family: str | None = None) -> str:
        """One random event at ``at_ms``; returns the family actually produced."""
        rng = self.rng
        guild = self.pick_guild(at_ms)
        fam = family or rng.choices(self._families, cum_weights=self._family_cum)[0]
        if fam == "edit" and self._edit_random(guild, at_ms):
            return fam
        if fam == "delete" and self._delete_random(guild, at_ms):
            return fam
        if fam == "reaction" and self._reaction_random(guild, at_ms):
            return fam
        if fam == "unreact" and self._unreact_random(at_ms):
            return fam
        if fam == "voice":
            self._voice_random(guild, at_ms)
            return fam
        if fam in ("member", "join", "leave"):
            self._member_random(guild, at_ms, fam)
            return fam
        if fam == "presence":
            self.presence_random(guild.id, at_ms)
            return fam
        if fam == "thread" and guild.text_channels():
            parent = rng.choice(guild.text_channels())
            owner = self.pick_author(guild, humans_only=True)
            self.create_thread(guild.id, parent.id, owner.user.id, at_ms=at_ms)
            return fam
        if fam == "command":
            skip = self.config.random_command_skip
            names = [n for n in self.app.command_names(guild.id) if n not in skip]
            if names and guild.text_channels():
                user = self.pick_author(guild, humans_only=True)
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

    def pick_author(
        self, guild: Guild, *, humans_only: bool = False, at_ms: int | None = None
    ) -> Member:
        """A member by activity weight; at ``at_ms``, one still engaged then (a few draws;
        only the showcase's newcomers drift away)."""
        humans, cum, bots = self.authors(guild)
        if not humans_only and bots and self.rng.random() < self.config.bot_author_share:
            return self.rng.choice(bots)
        member = self.rng.choices(humans, cum_weights=cum)[0]
        for _ in range(8):
            if member.engaged(at_ms):
                break
            member = self.rng.choices(humans, cum_weights=cum)[0]
        return member

    def pick_text_channel(self, texts: list[Channel]) -> Channel:
        """By the channels' weights when they differ (the showcase's), else uniformly."""
        if all(c.weight == 1.0 for c in texts):
            return self.rng.choice(texts)
        return self.rng.choices(texts, weights=[c.weight for c in texts])[0]

    def _message_random(self, guild: Guild, at_ms: int) -> None:
        rng = self.rng
        texts, threads = self.message_channels(guild)
        if threads and rng.random() < self.config.thread_message_share:
            channel = rng.choice(threads)
        else:
            channel = self.pick_text_channel(texts)
        author = self.pick_author(guild, at_ms=at_ms)
        self.post_message(
            guild.id, channel.id, author.user.id, self.pick_kind(channel.id), at_ms=at_ms
        )

    def pick_kind(self, channel_id: int) -> str:
        kind = self.rng.choices(self._kinds, cum_weights=self._kind_cum)[0]
        return "text" if kind == "reply" and not self.has_recent(channel_id) else kind

    def historical_message(self, at_ms: int) -> None:
        """One message in a text channel before the bot was there, reachable only through
        channel history (its id carries its time)."""
        guild = self._pick_history_guild(at_ms)
        texts = [c for c in guild.channels.values() if c.type == TEXT]
        member = self.pick_author(guild)
        channel = self.rng.choice(texts)
        kind = self.pick_kind(channel.id)
        self.post_message(guild.id, channel.id, member.user.id, kind, at_ms=at_ms, historical=True)

    def _edit_random(self, guild: Guild, at_ms: int) -> bool:
        recent = self.recent_in(guild)
        if not recent:
            return False
        self.edit_message(self.rng.choice(recent), at_ms=at_ms)
        return True

    def _delete_random(self, guild: Guild, at_ms: int) -> bool:
        recent = self.recent_in(guild)
        if not recent:
            return False
        self.delete_message(self.rng.choice(recent))
        return True

    def _reaction_random(self, guild: Guild, at_ms: int) -> bool:
        """A member reacts to a recent message, or takes a reaction of theirs back."""
        rng = self.rng
        recent = self.recent_in(guild)
        if not recent:
            return False
        if rng.random() < REACTION_REMOVE_SHARE:
            held = [
                (mid, uid, key)
                for mid in recent
                for uid, key in sorted(self.reactions_on(mid))
                if uid in guild.members
            ]
            if held:
                mid, uid, key = rng.choice(held)
                self.unreact(mid, uid, emoji_of(guild, key), at_ms=at_ms)
                return True
        mid = rng.choice(recent)
        user = self.pick_author(guild, humans_only=True).user.id
        taken = {key for uid, key in self.reactions_on(mid) if uid == user}
        choices = [e for e in all_emoji(guild) if str(e["id"] or e["name"]) not in taken]
        if not choices:
            return False
        self.react(mid, user, rng.choice(choices), at_ms=at_ms)
        return True

    def _unreact_random(self, at_ms: int) -> bool:
        """A member takes back one of the reactions on messages that still exist, anywhere."""
        held = self.reactions_held()
        if not held:
            return False
        mid, uid, key = self.rng.choice(held)
        guild = self.world.guilds[self.ledger.messages[mid].guild_id]
        self.unreact(mid, uid, emoji_of(guild, key), at_ms=at_ms)
        return True

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

    def presence_random(self, guild_id: int, at_ms: int) -> None:
        """One random presence update of a member of ``guild_id``: mostly a transition, a
        repeat (``presence_repeat_share``) for a member who is not offline."""
        rng = self.rng
        guild = self.world.guilds[guild_id]
        members = [uid for uid in guild.members if uid != self.world.bot_user.id]
        uid = rng.choice(members)
        status, types = self.presences.get((guild.id, uid), ("offline", 0))
        if status != "offline" and rng.random() < self.config.presence_repeat_share:
            self.presence_update(guild.id, uid, status, types, at_ms=at_ms)
            return
        while (status, types) == self.presences.get((guild.id, uid), ("offline", 0)):
            status = rng.choices(list(PRESENCE_STATUSES), list(PRESENCE_STATUSES.values()))[0]
            types = 0
            if status != "offline":
                for t in rng.sample(range(6), rng.choice((0, 0, 1, 1, 2))):
                    types |= 1 << t
        self.presence_update(guild.id, uid, status, types, at_ms=at_ms)

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


def custom_emoji(guild: Guild) -> list[Json]:
    """The guild's own emoji: ids derived from the guild's, so every run has the same."""
    return [{"id": str(guild.id + n), "name": f"herwa_{n}"} for n in range(1, CUSTOM_EMOJI + 1)]


def all_emoji(guild: Guild) -> list[Json]:
    return [{"id": None, "name": e} for e in UNICODE_EMOJI] + custom_emoji(guild)


def emoji_of(guild: Guild, key: str) -> Json:
    """The emoji payload whose key (custom id, else the unicode emoji) is ``key``."""
    return next(e for e in all_emoji(guild) if str(e["id"] or e["name"]) == key)
