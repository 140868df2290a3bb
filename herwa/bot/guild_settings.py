"""A server's settings: its ``guilds`` row, read and written here only.

Capture reads tracked channels, bot messages and the snapshot hour; the commands read the time
zone, tracked channels and snapshot hour; both through :class:`GuildConfig`. Two writers own
the row: the bot registers a guild it joins (name, join time and, for a new row, the pod's
defaults: from then on the row is the authority), and ``/config`` changes one setting and
notifies every pod on :data:`CONFIG_CHANNEL`, so capture applies it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from herwa.config import BotSettings

log = logging.getLogger(__name__)

# Postgres NOTIFY channel: every bot pod LISTENs and reloads its capture settings (tracked
# channels, snapshot hour) at once, instead of at its next periodic refresh.
CONFIG_CHANNEL = "herwa_guild_config"
# What /config may change (a column name is formatted into the SQL: only ever these).
SETTINGS = frozenset({"timezone", "tracked_channel_ids", "snapshot_hour_utc"})
# The bot's registration of a guild; its columns in order, for the dead-letter record.
REGISTER_COLUMNS = (
    "guild_id",
    "name",
    "icon",
    "owner_id",
    "joined_at",
    "timezone",
    "snapshot_hour_utc",
    "count_bot_messages",
)
REGISTER = (
    "INSERT INTO guilds (guild_id, name, icon, owner_id, joined_at, timezone, snapshot_hour_utc, "
    "count_bot_messages) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
    "ON CONFLICT (guild_id) DO UPDATE SET name = EXCLUDED.name, icon = EXCLUDED.icon, "
    "owner_id = EXCLUDED.owner_id, "
    "joined_at = COALESCE(guilds.joined_at, EXCLUDED.joined_at), left_at = NULL, "
    "updated_at = now()"
)
# GUILD_UPDATE: the profile changed; the settings chosen by the server's admins stay.
PROFILE_COLUMNS = ("guild_id", "name", "icon", "owner_id")
PROFILE = (
    "INSERT INTO guilds (guild_id, name, icon, owner_id) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (guild_id) DO UPDATE SET name = EXCLUDED.name, icon = EXCLUDED.icon, "
    "owner_id = EXCLUDED.owner_id, updated_at = now()"
)
_CHANGE = """
    INSERT INTO guilds (guild_id, {column}) VALUES ($1, $2)
    ON CONFLICT (guild_id) DO UPDATE SET {column} = EXCLUDED.{column}, updated_at = now()
"""
_SELECT = (
    "SELECT guild_id, timezone, tracked_channel_ids, count_bot_messages, snapshot_hour_utc "
    "FROM guilds"
)


@dataclass(frozen=True)
class GuildConfig:
    """A server's settings; the defaults are the ``guilds`` table's column defaults."""

    timezone: str = "UTC"
    # None: every channel is tracked; otherwise only these (and their threads), as set.
    tracked_channel_ids: tuple[int, ...] | None = None
    count_bot_messages: bool = False
    snapshot_hour_utc: int = 0
    _tracked: frozenset[int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked for every captured message: a set, not the ordered tuple.
        tracked = self.tracked_channel_ids
        object.__setattr__(self, "_tracked", None if tracked is None else frozenset(tracked))

    def tracks(self, channel_id: int) -> bool:
        """Whether capture records this channel (a thread: ask with its parent)."""
        return self._tracked is None or channel_id in self._tracked


def bot_defaults(settings: BotSettings, timezone: str = "UTC") -> GuildConfig:
    """A guild's settings until its row says otherwise, and a new row's values; ``timezone``
    is the platform's default (``HERWA_GUILD_TIMEZONE``)."""
    return GuildConfig(
        timezone=timezone,
        count_bot_messages=settings.count_bot_messages,
        snapshot_hour_utc=settings.snapshot_hour_utc,
    )


def _config(row: asyncpg.Record) -> GuildConfig:
    tracked = row["tracked_channel_ids"]
    return GuildConfig(
        row["timezone"],
        tuple(tracked) if tracked is not None else None,
        bool(row["count_bot_messages"]),
        int(row["snapshot_hour_utc"]),
    )


async def load_all(conn: Any) -> dict[int, GuildConfig]:
    return {int(r["guild_id"]): _config(r) for r in await conn.fetch(_SELECT)}


async def load(conn: Any, guild_id: int) -> GuildConfig | None:
    """One guild's settings; None when the guild has no row yet."""
    row = await conn.fetchrow(_SELECT + " WHERE guild_id = $1", guild_id)
    return None if row is None else _config(row)


async def change(pool: asyncpg.Pool, guild_id: int, setting: str, value: Any) -> None:
    """Set one setting (``/config``) and tell every pod, in one transaction."""
    if setting not in SETTINGS:
        raise ValueError(setting)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_CHANGE.format(column=setting), guild_id, value)
        # Delivered at commit: no pod reloads before the new value is visible.
        await conn.execute("SELECT pg_notify($1, $2)", CONFIG_CHANNEL, str(guild_id))


async def left(conn: Any, guild_id: int) -> None:
    """The bot left the guild; its settings stay for a return."""
    await conn.execute(
        "UPDATE guilds SET left_at = now(), updated_at = now() WHERE guild_id = $1", guild_id
    )


async def follow(pool: asyncpg.Pool, reload: Callable[[], Awaitable[None]]) -> None:
    """Call ``reload`` whenever /config commits a change, and every 30 s: the periodic reload
    covers notifications lost with a dropped listening connection."""
    changed = asyncio.Event()

    def notified(*_: object) -> None:
        changed.set()

    while True:
        try:
            async with pool.acquire() as conn:
                await conn.add_listener(CONFIG_CHANNEL, notified)
                try:
                    while True:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), 30.0)
                        changed.clear()
                        await reload()
                finally:
                    await conn.remove_listener(CONFIG_CHANNEL, notified)
        except Exception as exc:
            log.warning("guild settings refresh failed: %s", exc)
            await asyncio.sleep(5.0)
