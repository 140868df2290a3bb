"""Which channels' figures a member may be shown: those they can view.

Decided per invocation as Discord decides it, from the server's roles and each channel's
permission overwrites in discord.py's guild cache and the member's roles as the interaction
carries them (``permissions_for``; the owner and Administrator see everything). Per-channel
counts, authors and leaderboards must not reveal activity in a channel the member cannot open,
so restricting them is the answer, not Manage Server: members keep the commands, each seeing
the server as they can see it. Channels the server no longer has (deleted, their figures stay)
have no overwrites left to decide by; only members with Manage Server see those, as those can
export the server's data anyway.

A pod that RESUMEd a shard's session (a restart, a handover) never received the server's
GUILD_CREATE, so discord.py has no roles or channels of it: then the server and its channels
are fetched over REST and kept for a minute. Should that fail, the member sees the channel they
invoked the command from, whose view permission Discord computed itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

import discord

from herwa.analytics import ChannelScope
from herwa.bot.commands._runtime import Context

log = logging.getLogger(__name__)

FETCHED_TTL_SECONDS = 60.0
FETCH_TIMEOUT_SECONDS = 2.0
_fetched: dict[int, tuple[float, Sequence[discord.abc.GuildChannel]]] = {}


async def visible_channels(ctx: Context) -> ChannelScope:
    interaction = ctx.interaction
    member = interaction.user
    channels = await _server_channels(ctx)
    listed = {c.id for c in channels}
    viewable: set[int] = set()
    if isinstance(member, discord.Member):
        viewable = {c.id for c in channels if c.permissions_for(member).view_channel}
    if interaction.permissions.view_channel and interaction.channel_id is not None:
        viewable.add(interaction.channel_id)
        parent = getattr(interaction.channel, "parent_id", None)  # a thread's own channel
        if isinstance(parent, int):
            viewable.add(parent)
    return ChannelScope(
        frozenset(viewable), frozenset(listed), bool(interaction.permissions.manage_guild)
    )


def can_view(scope: ChannelScope, channel_id: int) -> bool:
    """Whether figures of ``channel_id`` may be shown (and the channel offered) to the member."""
    return channel_id in scope.viewable or (scope.unlisted and channel_id not in scope.listed)


async def _server_channels(ctx: Context) -> Sequence[discord.abc.GuildChannel]:
    """The server's channels, bound to a guild that knows its roles; () if unknown."""
    guild = ctx.interaction.guild
    if guild is not None and guild.default_role is not None:
        return guild.channels
    now = time.monotonic()
    hit = _fetched.get(ctx.guild_id)
    if hit is not None and now - hit[0] < FETCHED_TTL_SECONDS:
        return hit[1]
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
            fetched = await ctx.interaction.client.fetch_guild(ctx.guild_id, with_counts=False)
            channels: Sequence[discord.abc.GuildChannel] = await fetched.fetch_channels()
    except (discord.HTTPException, TimeoutError) as exc:
        log.warning("cannot fetch the server's channels: %s: %s", type(exc).__name__, exc)
        return ()
    _fetched[ctx.guild_id] = (now, channels)
    return channels


def scope_key(scope: ChannelScope) -> str:
    """For the reply cache: members who see different channels get different replies."""
    text = ",".join(map(str, sorted(scope.viewable))) + f"|{int(scope.unlisted)}"
    if scope.unlisted:
        text += "|" + ",".join(map(str, sorted(scope.listed)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
