"""What the bot knows about guilds and channels: thread parents, channel kinds, member counts
and each guild's capture settings (tracked channels, bot messages) from Postgres ``guilds``.

Filled from GUILD_CREATE / CHANNEL_* / THREAD_* payloads and, for a shard that RESUMEs (and so
gets no GUILD_CREATE), from the ``channels`` and ``guilds`` tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from herwa.bot import channel_types
from herwa.bot.guild_settings import GuildConfig
from herwa.json_types import Json


@dataclass
class ChannelInfo:
    guild_id: int
    kind: int
    parent_id: int | None
    name: str | None


class Directory:
    def __init__(self, default: GuildConfig) -> None:
        self.default = default
        self.configs: dict[int, GuildConfig] = {}
        self.channels: dict[int, ChannelInfo] = {}
        self._thread_parent: dict[int, int] = {}
        self.member_counts: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def config(self, guild_id: int) -> GuildConfig:
        return self.configs.get(guild_id, self.default)

    def thread_parent(self, channel_id: int) -> int | None:
        return self._thread_parent.get(channel_id)

    def channel_kind(self, channel_id: int) -> int | None:
        info = self.channels.get(channel_id)
        return None if info is None else info.kind

    def add_channel(self, guild_id: int, c: Json) -> ChannelInfo:
        cid = int(c["id"])
        parent = c.get("parent_id")
        info = ChannelInfo(
            guild_id, int(c.get("type", 0)), int(parent) if parent else None, c.get("name")
        )
        self.channels[cid] = info
        if info.kind in channel_types.THREADS and info.parent_id is not None:
            self._thread_parent[cid] = info.parent_id
        return info

    def remove_channel(self, channel_id: int) -> None:
        self.channels.pop(channel_id, None)
        # Thread parents are kept: late events for a deleted thread still map to its parent.

    def add_guild(self, d: Json) -> list[tuple[int, ChannelInfo]]:
        gid = int(d["id"])
        self.names[gid] = d.get("name") or ""
        if d.get("member_count") is not None:
            self.member_counts[gid] = int(d["member_count"])
        added = []
        for c in (*d.get("channels", ()), *d.get("threads", ())):
            added.append((int(c["id"]), self.add_channel(gid, c)))
        return added

    def guild_channels(self, guild_id: int, kinds: frozenset[int]) -> list[int]:
        return [
            cid for cid, c in self.channels.items() if c.guild_id == guild_id and c.kind in kinds
        ]

    def forget_guild(self, guild_id: int) -> None:
        for cid in [cid for cid, c in self.channels.items() if c.guild_id == guild_id]:
            del self.channels[cid]
        self.member_counts.pop(guild_id, None)

    def member_delta(self, guild_id: int, delta: int) -> None:
        if guild_id in self.member_counts:
            self.member_counts[guild_id] = max(0, self.member_counts[guild_id] + delta)
