"""Option autocomplete: time zones and channels offered while a member types.

Discord asks on every keystroke and shows nothing unless answered within 3 s, so suggestions
are cheap (zoneinfo's names, in memory; the server's channels from discord.py's cache and the
bot's channels table) and never fail: an error answers no choices. They are suggestions only:
a client can send anything as the final value, which the command validates again
(_options.py). Channels offered are those the member can view (_visibility.py), never others;
autocomplete is free (no quota, no rate limit: it is not an invocation).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import discord
from discord import app_commands

from herwa.bot.commands._options import OptionError, parse_timezone
from herwa.bot.commands._runtime import CommandDeps, Context
from herwa.bot.commands._visibility import can_view, visible_channels

log = logging.getLogger(__name__)

MAX_CHOICES = 25  # Discord's limit per answer
MAX_TEXT = 100  # Discord's limit for a choice's name and a string choice's value
# What a member types is cut to this before matching: no zone or channel name is longer, and
# a megabyte of input must cost no more than a short one.
MAX_TYPED = 100
COMMON_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Asia/Singapore",
    "Australia/Sydney",
)
_SEPARATORS = re.compile(r"[\s,]")
_MENTION = re.compile(r"<?#?(\d{15,20})>?")
Choice = app_commands.Choice


@cache
def zone_names() -> tuple[str, ...]:
    """Every name /config timezone accepts."""

    def valid(name: str) -> bool:
        try:
            return parse_timezone(name) == name
        except OptionError:
            return False

    return tuple(sorted(filter(valid, available_timezones())))


def _typed(value: object) -> str:
    return value[:MAX_TYPED] if isinstance(value, str) else ""


def _utc_offset(zone: str, now: datetime) -> str:
    text = now.astimezone(ZoneInfo(zone)).strftime("%z")  # +0530
    return f"UTC{text[:3]}:{text[3:]}"


def suggest_zones(typed: object, now: datetime | None = None) -> list[Choice[str]]:
    """Zone names matching what was typed (``berlin``, ``europe/be``, ``new york``): names
    starting with it first, then names with a part starting with it, then names containing
    it; the common zones when nothing is typed yet."""
    try:
        query = _typed(typed).strip().casefold().replace(" ", "_")
        names = zone_names()
        if not query:
            picked = [z for z in COMMON_ZONES if z in names]
        else:
            ranked = []
            for name in names:
                folded = name.casefold()
                if folded.startswith(query):
                    ranked.append((0, name))
                elif any(part.startswith(query) for part in folded.split("/")[1:]):
                    ranked.append((1, name))
                elif query in folded:
                    ranked.append((2, name))
            picked = [name for _, name in sorted(ranked)]
        at = now or datetime.now(UTC)
        return [Choice(name=f"{z} ({_utc_offset(z, at)})", value=z) for z in picked[:MAX_CHOICES]]
    except Exception:
        log.exception("time zone autocomplete failed")
        return []


def label(name: str, limit: int = MAX_TEXT) -> str:
    """A channel name as a choice shows it: no control characters, at most ``limit`` long."""
    clean = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "\u2026"


async def _server_channels(ctx: Context) -> dict[int, str]:
    """The server's channels and threads the bot knows, categories left out (nothing is
    written in a category): discord.py's cache, then the bot's channels table."""
    known: dict[int, str] = {}
    guild = ctx.interaction.guild
    if guild is not None:
        for channel in [*guild.channels, *guild.threads]:
            if not isinstance(channel, discord.CategoryChannel):
                known[channel.id] = channel.name
    for row in await ctx.deps.pool.fetch(
        "SELECT channel_id, name FROM channels WHERE guild_id = $1 AND kind <> 'category'",
        ctx.guild_id,
    ):
        known.setdefault(int(row["channel_id"]), row["name"] or "")
    return known


def _rank(query: str, channel_id: int, name: str) -> int | None:
    folded = name.casefold()
    if folded.startswith(query):
        return 0
    if query in folded:
        return 1
    if query.isdigit() and str(channel_id).startswith(query):
        return 2
    return None


def _matching(query: str, channels: dict[int, str], skip: Iterable[int]) -> list[int]:
    query = query.strip().casefold()
    mention = _MENTION.fullmatch(query)
    if mention is not None:
        query = mention.group(1)
    elif query.startswith("<#") or query.startswith("#"):
        query = query.lstrip("<#")
    left_out = set(skip)
    ranked = []
    for cid, name in channels.items():
        rank = _rank(query, cid, name)
        if rank is not None and cid not in left_out:
            ranked.append((rank, name.casefold(), cid))
    return [cid for _, _, cid in sorted(ranked)]


async def suggest_channels(
    deps: CommandDeps,
    interaction: discord.Interaction[Any],
    typed: object,
    *,
    several: bool = False,
    admin: bool = False,
) -> list[Choice[str]]:
    """Channels of this server the member can view whose name (or id) matches what was typed.

    With ``several`` the option holds a list (``#a #b #c…``): the last, unfinished entry is
    completed and the entries before it are kept in each choice's value. With ``admin`` only
    members with Manage Server get suggestions, as only they can run the command."""
    try:
        guild_id = interaction.guild_id
        if guild_id is None or (admin and not interaction.permissions.manage_guild):
            return []
        ctx = Context(interaction, deps, guild_id, interaction.user.id, None, datetime.now(UTC))
        scope = await visible_channels(ctx)
        channels = {
            cid: name for cid, name in (await _server_channels(ctx)).items() if can_view(scope, cid)
        }
        text = _typed(typed)
        head, partial = "", text
        if several:
            cut = max((m.end() for m in _SEPARATORS.finditer(text)), default=0)
            head, partial = text[:cut], text[cut:]
        given = [int(m.group(1)) for m in _MENTION.finditer(head)]
        choices: list[Choice[str]] = []
        if several and not head.strip() and "all".startswith(partial.strip().casefold()):
            choices.append(Choice(name="all channels", value="all"))
        for cid in _matching(partial, channels, given):
            value = f"{head}{cid}"
            if len(value) > MAX_TEXT:
                break
            prefix = f"{len(given)} + " if given else ""
            shown = label(channels[cid], MAX_TEXT - len(prefix) - 1) or str(cid)
            choices.append(Choice(name=f"{prefix}#{shown}", value=value))
            if len(choices) == MAX_CHOICES:
                break
        return choices
    except Exception:
        log.exception("channel autocomplete failed")
        return []
