"""The simulated Discord world: users, guilds, channels, threads, voice states.

Everything here is plain state plus the JSON shapes Discord sends for it. Ids are snowflakes
whose timestamps are the objects' creation times, because discord.py derives ``created_at`` and
the shard of a guild from them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property

from herwa.json_types import Json
from herwa.simulator._snowflake import SnowflakeFactory, iso_from_ms

# Channel types as Discord numbers them.
TEXT = 0
VOICE = 2
PUBLIC_THREAD = 11
STAGE = 13

# Permission bits the simulator hands out: everyone may read and send; the guild owner and
# the invoking members in interactions are administrators, like a typical test server.
EVERYONE_PERMISSIONS = "1071698660929"
ADMIN_PERMISSIONS = "2251799813685247"

TIMEZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "UTC",
    "America/Los_Angeles",
    "Europe/London",
    "Australia/Sydney",
    "America/Sao_Paulo",
)

_DAY_MS = 86_400_000
# A fixed origin so that the same seed gives the same ids whatever day the simulator runs.
_WORLD_ORIGIN_MS = 1_609_459_200_000  # 2021-01-01T00:00:00Z
# Snowflakes must fit a signed 64-bit integer (the bot stores them as Postgres bigint): their
# timestamp runs out in September 2084. Guilds are created before this, and their members join
# within weeks, so every id of a world stays valid.
_WORLD_END_MS = 3_471_292_800_000  # 2080-01-01T00:00:00Z
# 2·3·5·7·11·13: a step of one more than a multiple of it shares no factor with any shard count
# made of these primes, so consecutive guilds cycle through every shard.
_SHARD_SPREAD = 30_030


def guild_step_ms(guilds: int) -> int:
    """Milliseconds between consecutive guilds' creation times: one day and one millisecond
    (their timestamp bits, and so their shards, differ for every shard count, unlike ids
    minted in one millisecond), or less for a world too large to fit one a day before
    ``_WORLD_END_MS``."""
    if _WORLD_ORIGIN_MS + guilds * (_DAY_MS + 1) <= _WORLD_END_MS:
        return _DAY_MS + 1
    return (_WORLD_END_MS - _WORLD_ORIGIN_MS) // guilds // _SHARD_SPREAD * _SHARD_SPREAD + 1


@dataclass
class User:
    id: int
    username: str
    global_name: str | None
    bot: bool = False
    avatar: str | None = None

    def payload(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": self.avatar,
            "public_flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data

    @cached_property
    def json(self) -> Json:
        """The payload, built once: users never change here, and messages embed it by
        reference (never mutated), which keeps MESSAGE_CREATE generation cheap."""
        return self.payload()


@dataclass
class Member:
    user: User
    joined_at_ms: int
    # Heavy-tailed activity weight: a few members write most messages.
    weight: float = 1.0
    # Role ids beyond @everyone (Guild.roles); set before the member's payload is first built.
    role_ids: list[int] = field(default_factory=list)
    # After this time the member writes nothing more (None: never drifts away). Only the
    # showcase's newcomers drift away, as most members who join a large server do.
    engaged_until_ms: int | None = None

    def engaged(self, at_ms: int | None) -> bool:
        return self.engaged_until_ms is None or at_ms is None or at_ms <= self.engaged_until_ms

    def payload(self, *, with_user: bool = True) -> Json:
        data: Json = {
            "roles": [str(r) for r in self.role_ids],
            "joined_at": iso_from_ms(self.joined_at_ms),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data

    @cached_property
    def json_without_user(self) -> Json:
        """The ``member`` field of MESSAGE_CREATE, built once (see ``User.json``)."""
        return self.payload(with_user=False)


@dataclass
class Channel:
    id: int
    guild_id: int
    type: int
    name: str
    position: int
    parent_id: int | None = None
    owner_id: int | None = None
    created_ms: int = 0
    # Discord's permission overwrites: {"id", "type" (0 role, 1 member), "allow", "deny"}.
    overwrites: list[Json] = field(default_factory=list)
    # How busy the channel is relative to the guild's others (the showcase's are heavy-tailed).
    weight: float = 1.0

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD

    @property
    def is_voice(self) -> bool:
        return self.type in (VOICE, STAGE)

    def payload(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [dict(o) for o in self.overwrites],
            "nsfw": False,
            "parent_id": str(self.parent_id) if self.parent_id else None,
        }
        if self.type == TEXT:
            data.update(topic=None, rate_limit_per_user=0, last_message_id=None)
        elif self.type in (VOICE, STAGE):
            data.update(bitrate=64000, user_limit=0, rtc_region=None)
        elif self.type == PUBLIC_THREAD:
            data.update(
                owner_id=str(self.owner_id),
                rate_limit_per_user=0,
                message_count=0,
                member_count=1,
                last_message_id=None,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": iso_from_ms(self.created_ms),
                    "locked": False,
                    "create_timestamp": iso_from_ms(self.created_ms),
                },
            )
        return data


@dataclass
class VoiceState:
    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False
    joined_ms: int = 0

    def payload(self, guild_id: int, member: Member | None) -> Json:
        data: Json = {
            "guild_id": str(guild_id),
            "channel_id": str(self.channel_id),
            "user_id": str(self.user_id),
            "session_id": self.session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": self.self_deaf,
            "self_mute": self.self_mute,
            "self_video": False,
            "self_stream": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if member is not None:
            data["member"] = member.payload()
        return data


@dataclass
class Guild:
    id: int
    name: str
    timezone: str
    owner_id: int
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    voice: dict[int, VoiceState] = field(default_factory=dict)
    # Scale factor for how busy the guild is relative to the others.
    activity: float = 1.0
    # Roles besides @everyone, as GUILD_CREATE lists them ({"id", "name", "permissions", …}).
    roles: list[Json] = field(default_factory=list)
    icon: str | None = None  # Discord's image hash

    def text_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.type == TEXT]

    def threads(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.type == PUBLIC_THREAD]

    def voice_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.is_voice]

    def profile(self) -> Json:
        """What GUILD_UPDATE carries of the server (and GUILD_CREATE too)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": self.icon,
            "owner_id": str(self.owner_id),
        }

    def create_payload(self, *, bot: Member, include_members: bool) -> Json:
        """GUILD_CREATE as a bot receives it.

        Without GUILD_MEMBERS Discord still sends the bot itself and the members currently in
        voice; ``member_count`` is always the real total.
        """
        if include_members:
            members = [m.payload() for m in self.members.values()]
        else:
            wanted = {bot.user.id, *self.voice}
            members = [m.payload() for uid, m in self.members.items() if uid in wanted]
        channels = [c.payload() for c in self.channels.values() if not c.is_thread]
        threads = [c.payload() for c in self.channels.values() if c.is_thread]
        return {
            "id": str(self.id),
            "name": self.name,
            **self.profile(),
            "unavailable": False,
            "large": len(self.members) > 250,
            "member_count": len(self.members),
            "joined_at": iso_from_ms(bot.joined_at_ms),
            "roles": [
                {
                    "id": str(self.id),
                    "name": "@everyone",
                    "permissions": EVERYONE_PERMISSIONS,
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                *self.roles,
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "afk_timeout": 300,
            "channels": channels,
            "threads": threads,
            "members": members,
            "voice_states": [
                {k: v for k, v in vs.payload(self.id, None).items() if k != "guild_id"}
                for vs in self.voice.values()
            ],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(frozen=True)
class ShowcaseConfig:
    """One large server beside the others, shaped like a real community: thousands of
    members and channels whose activity is heavy-tailed, and newcomers of whom most drift away
    within weeks (what retention charts show). Built last, from a generator of its own, so the
    other guilds are the ones the seed gives without it."""

    members: int = 3000
    text_channels: int = 12
    voice_channels: int = 3
    timezone: str = "Europe/Berlin"
    # The server's share of all guilds' activity: how often live traffic picks it.
    activity_share: float = 0.1
    # A newcomer stays engaged for an exponential time with this mean (days); ``lurker_share``
    # of them never write, ``loyal_share`` stay for good.
    engaged_days: float = 10.0
    lurker_share: float = 0.45
    loyal_share: float = 0.15


_SHOWCASE_CHANNELS = (
    "general",
    "off-topic",
    "memes",
    "help",
    "gaming",
    "art",
    "music",
    "announcements",
    "introductions",
    "dev",
    "events",
    "feedback",
)


@dataclass(frozen=True)
class WorldConfig:
    guilds: int = 3
    members_per_guild: tuple[int, int] = (20, 60)
    text_channels: int = 3
    voice_channels: int = 2
    stage_channels: int = 1
    threads: int = 1
    bots_per_guild: int = 1
    timezones: tuple[str, ...] = TIMEZONES
    showcase: ShowcaseConfig | None = None


class World:
    """All guilds the simulated bot is in, built deterministically from a seed."""

    def __init__(self, config: WorldConfig, rng: random.Random, bot_user: User) -> None:
        self.config = config
        self.bot_user = bot_user
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self._ids = SnowflakeFactory(worker=2)
        self._user_seq = 0
        self.showcase: Guild | None = None
        self._build(rng)

    def new_user(self, rng: random.Random, created_ms: int, *, bot: bool = False) -> User:
        self._user_seq += 1
        n = self._user_seq
        uid = self._ids.at(created_ms)
        name = f"{'bot' if bot else 'user'}{n}"
        return User(id=uid, username=name, global_name=None if bot else f"User {n}", bot=bot)

    def _build(self, rng: random.Random) -> None:
        cfg = self.config
        step = guild_step_ms(cfg.guilds + (cfg.showcase is not None))
        for i in range(cfg.guilds):
            created = _WORLD_ORIGIN_MS + i * step
            gid = self._ids.at(created)
            owner_created = created - rng.randrange(30, 1500) * _DAY_MS
            owner = Member(self.new_user(rng, owner_created), created, weight=2.0)
            guild = Guild(
                id=gid,
                name=f"Guild {i + 1}",
                timezone=cfg.timezones[i % len(cfg.timezones)],
                owner_id=owner.user.id,
                activity=rng.paretovariate(2.0),
            )
            guild.members[owner.user.id] = owner
            bot_member = Member(self.bot_user, created + _DAY_MS, weight=0.0)
            guild.members[self.bot_user.id] = bot_member
            lo, hi = cfg.members_per_guild
            for _ in range(rng.randint(lo, hi)):
                self.add_member(guild, rng, created + rng.randrange(1, 200) * _DAY_MS // 7)
            for _ in range(cfg.bots_per_guild):
                self.add_member(guild, rng, created + _DAY_MS, bot=True)
            pos = 0
            names = ["general", "random", "memes", "help", "announcements", "dev"]
            for k in range(cfg.text_channels):
                self._add_channel(
                    guild, TEXT, names[k % len(names)] + ("" if k < 6 else str(k)), pos, created + 1
                )
                pos += 1
            for k in range(cfg.voice_channels):
                self._add_channel(guild, VOICE, f"Voice {k + 1}", pos, created + 2)
                pos += 1
            for k in range(cfg.stage_channels):
                self._add_channel(guild, STAGE, f"Stage {k + 1}", pos, created + 3)
                pos += 1
            texts = guild.text_channels()
            for k in range(cfg.threads if texts else 0):
                parent = texts[k % len(texts)]
                self.add_thread(guild, parent, guild.owner_id, created + 4 + k, f"thread-{k + 1}")
            self.guilds[gid] = guild
        if cfg.showcase is not None:
            showcase_rng = random.Random(rng.getrandbits(64))
            created = _WORLD_ORIGIN_MS + cfg.guilds * step
            self.showcase = self._build_showcase(cfg.showcase, showcase_rng, created)

    def _build_showcase(self, cfg: ShowcaseConfig, rng: random.Random, created: int) -> Guild:
        gid = self._ids.at(created)
        owner_created = created - rng.randrange(30, 1500) * _DAY_MS
        owner = Member(self.new_user(rng, owner_created), created, weight=20.0)
        others = sum(g.activity for g in self.guilds.values())
        share = min(max(cfg.activity_share, 0.0), 0.95)
        guild = Guild(
            id=gid,
            name="Showcase Community",
            timezone=cfg.timezone,
            owner_id=owner.user.id,
            activity=max(others * share / (1 - share), 1.0),
        )
        guild.members[owner.user.id] = owner
        guild.members[self.bot_user.id] = Member(self.bot_user, created + _DAY_MS, weight=0.0)
        for _ in range(cfg.members):
            self.add_member(guild, rng, created + rng.randrange(1, 700) * _DAY_MS // 7)
        for _ in range(2):
            self.add_member(guild, rng, created + _DAY_MS, bot=True)
        # Channels by popularity: a Zipf-like tail, #general the busiest by far.
        for k in range(cfg.text_channels):
            base = _SHOWCASE_CHANNELS[k % len(_SHOWCASE_CHANNELS)]
            name = base + ("" if k < len(_SHOWCASE_CHANNELS) else str(k))
            ch = self._add_channel(guild, TEXT, name, k, created + 1)
            ch.weight = 1.0 / (k + 1) ** 1.2 * rng.uniform(0.8, 1.25)
        for k in range(cfg.voice_channels):
            self._add_channel(guild, VOICE, f"Voice {k + 1}", cfg.text_channels + k, created + 2)
        texts = guild.text_channels()
        for k in range(min(3, len(texts))):
            self.add_thread(guild, texts[k], owner.user.id, created + 4 + k, f"thread-{k + 1}")
        self.guilds[gid] = guild
        return guild

    def engage(self, guild: Guild, member: Member, rng: random.Random, joined_ms: int) -> None:
        """A newcomer of the showcase: a lurker, engaged for a while, or loyal."""
        cfg = self.config.showcase
        if cfg is None or guild is not self.showcase or member.user.bot:
            return
        r = rng.random()
        if r < cfg.lurker_share:
            member.engaged_until_ms = joined_ms
        elif r < 1 - cfg.loyal_share:
            member.engaged_until_ms = joined_ms + int(
                rng.expovariate(1 / cfg.engaged_days) * _DAY_MS
            )

    def _add_channel(self, guild: Guild, ctype: int, name: str, pos: int, created: int) -> Channel:
        ch = Channel(self._ids.at(created), guild.id, ctype, name, pos, created_ms=created)
        guild.channels[ch.id] = ch
        self.channels[ch.id] = ch
        return ch

    def add_thread(
        self, guild: Guild, parent: Channel, owner_id: int, created: int, name: str
    ) -> Channel:
        ch = Channel(
            self._ids.at(created),
            guild.id,
            PUBLIC_THREAD,
            name,
            0,
            parent_id=parent.id,
            owner_id=owner_id,
            created_ms=created,
        )
        guild.channels[ch.id] = ch
        self.channels[ch.id] = ch
        return ch

    def add_member(
        self, guild: Guild, rng: random.Random, joined_ms: int, *, bot: bool = False
    ) -> Member:
        account_ms = joined_ms - rng.randrange(1, 2000) * _DAY_MS
        user = self.new_user(rng, account_ms, bot=bot)
        # Pareto(1.2): a heavy tail, the usual shape of per-user message counts.
        weight = rng.paretovariate(1.2) * (0.3 if bot else 1.0)
        member = Member(user, joined_ms, weight=weight)
        guild.members[user.id] = member
        return member

    def bot_member(self, guild: Guild) -> Member:
        return guild.members[self.bot_user.id]
