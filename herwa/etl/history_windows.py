"""How many days of history each server keeps: its entitlement's ``history_days`` quota, else
the default tier's, validated (:mod:`herwa.etl.expiry` deletes what is older).

A guild id outside bigint's positive range or a ``history_days`` that is not a whole number of
days in [1, :data:`MAX_HISTORY_DAYS`] is refused and reported, and that server's data (or, for
the default tier, every server's without a subscription) is kept rather than guessed at.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

QUOTA = "history_days"
MAX_HISTORY_DAYS = 36_500
EPOCH = date(1970, 1, 1)
MAX_GUILD_ID = 2**63 - 1  # Postgres bigint: where every guild id Herwa stores comes from


class _Refused(ValueError):
    pass


@dataclass(frozen=True)
class Windows:
    """Days of history per server; ``None`` keeps everything."""

    default: int | None  # a server without an entitlement row
    guilds: Mapping[int, int | None]  # servers with one
    refused: tuple[str, ...] = ()

    def fingerprint(self, today: date) -> str:
        text = json.dumps([today.isoformat(), self.default, sorted(self.guilds.items())])
        return hashlib.sha256(text.encode()).hexdigest()

    def cutoffs(self, today: date) -> tuple[dict[int, date | None], date | None]:
        """Each listed server's cutoff, and the default one (see :func:`cutoff`)."""
        return {g: cutoff(d, today) for g, d in self.guilds.items()}, cutoff(self.default, today)


def cutoff(days: int | None, today: date) -> date | None:
    """The first UTC day a server with this window keeps (``None``: it keeps every day).

    A cutoff before 1970 is none: ClickHouse dates start there, and Discord did not exist.
    """
    if days is None or today - EPOCH <= timedelta(days=days):
        return None
    return today - timedelta(days=days)


def _days(raw: str | None, whose: str) -> int | None:
    if raw is None:  # the quota is not set: no limit
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_HISTORY_DAYS:
        raise _Refused(
            f"{whose}: {QUOTA} {raw[:40]!r} is not a whole number of days in"
            f" [1, {MAX_HISTORY_DAYS}]; its history is kept"
        )
    return value


async def windows(pg: asyncpg.Connection) -> Windows:
    refused: list[str] = []
    default: int | None = None
    raw_default = await pg.fetchrow(
        "SELECT tier, quotas -> $1 AS days FROM tiers WHERE is_default", QUOTA
    )
    if raw_default is not None:  # none seeded yet: nothing is known, so nothing expires
        try:
            default = _days(raw_default["days"], f"default tier {raw_default['tier']!r}")
        except _Refused as exc:
            refused.append(str(exc))
    guilds: dict[int, int | None] = {}
    for row in await pg.fetch("SELECT guild_id, quotas -> $1 AS days FROM entitlements", QUOTA):
        guild = int(row["guild_id"])
        if not 1 <= guild <= MAX_GUILD_ID:
            refused.append(f"entitlement of guild id {guild}: not a Discord id; skipped")
            continue
        try:
            guilds[guild] = _days(row["days"], f"guild {guild}")
        except _Refused as exc:
            refused.append(str(exc))
            guilds[guild] = None
    return Windows(default, guilds, tuple(refused))
