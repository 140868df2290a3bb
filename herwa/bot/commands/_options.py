"""Validation of option values. Discord types them (int, str), but a string can hold anything
and an int any size, so every value is checked again here. Errors are :class:`OptionError`
with a message meant for the member; it never repeats the offending value or anything internal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones


class OptionError(ValueError):
    """An option value the member must correct; ``str(exc)`` is safe to show them."""


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CHANNEL = re.compile(r"(?:<#(\d{15,20})>|(\d{15,20}))")
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")
MAX_CHANNELS = 25


@dataclass(frozen=True)
class DateRange:
    """Whole local days ``first``..``last`` (inclusive) in ``tz``, and their UTC bounds."""

    first: date
    last: date
    tz: str

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def start_utc(self) -> datetime:
        return datetime.combine(self.first, time(), ZoneInfo(self.tz)).astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        """Exclusive."""
        nxt = self.last + timedelta(days=1)
        return datetime.combine(nxt, time(), ZoneInfo(self.tz)).astimezone(UTC)

    def label(self) -> str:
        return f"{self.first.isoformat()} to {self.last.isoformat()} ({self.tz})"


def parse_date(value: str, name: str) -> date:
    text = value.strip()
    if not _DATE.fullmatch(text):
        raise OptionError(f"`{name}` must be a date written as YYYY-MM-DD, e.g. 2024-03-31.")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise OptionError(f"`{name}` is not a real calendar date.") from None


def date_range(
    *,
    days: int,
    end: str | None,
    tz: str,
    now: datetime,
    history_days: int | None,
    max_days: int,
    tier: str,
) -> DateRange:
    """``days`` whole days ending with ``end`` (default: today in ``tz``).

    ``history_days`` is the tier's reach back from today; ``max_days`` a hard cap that holds
    whatever the tier says, so a huge range can never turn into a huge scan.
    """
    today = now.astimezone(ZoneInfo(tz)).date()
    last = parse_date(end, "end") if end is not None else today
    if days < 1:
        raise OptionError("`days` must be at least 1.")
    cap = max_days if history_days is None else min(max_days, history_days)
    if days > cap:
        raise OptionError(f"`days` can be at most {cap} on the {tier} tier.")
    if last > today:
        raise OptionError("`end` cannot be in the future.")
    # The window check comes before the first day is computed: an `end` near year 1 would
    # put it before the calendar (OverflowError) instead of outside the window.
    if (today - last).days + days - 1 >= cap:
        raise OptionError(
            f"The {tier} tier keeps {cap} days of history: choose an `end` within that window."
        )
    first = last - timedelta(days=days - 1)
    return DateRange(first, last, tz)


def bounded_int(value: int, name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise OptionError(f"`{name}` must be between {low} and {high}.")
    return value


def parse_channel_ids(value: str, guild_channels: set[int]) -> list[int]:
    """Channel mentions or ids separated by spaces or commas; each must be in this guild.

    An id of another guild and an id that does not exist get the same answer, so the reply
    reveals nothing about other guilds.
    """
    parts = [p for p in re.split(r"[\s,]+", value.strip()) if p]
    if not parts:
        raise OptionError("Name at least one channel (a #mention or a channel id).")
    if len(parts) > MAX_CHANNELS:
        raise OptionError(f"At most {MAX_CHANNELS} channels can be given at once.")
    ids: list[int] = []
    for part in parts:
        match = _CHANNEL.fullmatch(part)
        if match is None:
            raise OptionError("Channels must be given as #mentions or numeric channel ids.")
        cid = int(match.group(1) or match.group(2))
        if cid not in guild_channels:
            raise OptionError("One of those channels is not a channel of this server.")
        if cid not in ids:
            ids.append(cid)
    return ids


def parse_channel_id(value: str, guild_channels: set[int]) -> int:
    ids = parse_channel_ids(value, guild_channels)
    if len(ids) != 1:
        raise OptionError("Name exactly one channel.")
    return ids[0]


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def parse_timezone(value: str) -> str:
    text = value.strip()
    if not _ZONE.fullmatch(text) or text not in _zones():
        raise OptionError("Give an IANA time zone name such as Europe/Berlin or America/New_York.")
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise OptionError("That time zone is not available.") from None
    return text
