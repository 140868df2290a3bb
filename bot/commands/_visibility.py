"""Which channels' figures a member may be shown: those they can view.

Decided per invocation as Discord decides it, from the server's roles and each channel's
permission overwrites in discord.py's guild cache and the member's roles as the interaction
carries them (``permissions_for``; the owner and Administrator see everything). Per-channel
counts, authors and leaderboards must not reveal activity in a channel the member cannot open,
so restricting them is the answer, not Manage Server: members keep the commands, each seeing
the server as they can see it. Channels the server no longer has (deleted, their figures stay)
have no overwrites left to decide by; only members with Manage Server see those, as those can
export the server's data anyway. Without the server in the cache (not expected with the guilds
intent), a member sees the channel they invoked the command from, whose view permission
Discord computed itself.
"""

from __future__ import annotations

import hashlib

import discord

from herwa.analytics import ChannelScope
from herwa.bot.commands._runtime import Context


def visible_channels(ctx: Context) -> ChannelScope:
    interaction = ctx.interaction
    guild = interaction.guild
    member = interaction.user
    listed: set[int] = set()
    viewable: set[int] = set()
    if guild is not None:
        listed = {c.id for c in guild.channels}
        if isinstance(member, discord.Member):
            viewable = {c.id for c in guild.channels if c.permissions_for(member).view_channel}
    if interaction.permissions.view_channel and interaction.channel_id is not None:
        viewable.add(interaction.channel_id)
        parent = getattr(interaction.channel, "parent_id", None)  # a thread's own channel
        if isinstance(parent, int):
            viewable.add(parent)
    return ChannelScope(
        frozenset(viewable), frozenset(listed), bool(interaction.permissions.manage_guild)
    )


def scope_key(scope: ChannelScope) -> str:
    """For the reply cache: members who see different channels get different replies."""
    text = ",".join(map(str, sorted(scope.viewable))) + f"|{int(scope.unlisted)}"
    if scope.unlisted:
        text += "|" + ",".join(map(str, sorted(scope.listed)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
