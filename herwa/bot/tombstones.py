"""Servers whose data an admin deleted (Postgres ``guild_tombstones``, written by
``/privacy delete-server-data``): the bot records nothing of them — no live event, no backfill —
until an admin opts the server back in (``/privacy server-opt-in``). From then on live events
are recorded again, but backfill never reads history from before the opt-in, so the deleted
past cannot come back through a later fresh connection.

The pod that answers the command is the pod that captures the server (an interaction arrives on
the server's shard), so the command applies its change here at once; every pod also reloads
the table with the guild settings, which covers a shard handed to another pod.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from herwa.bot.capture import DISCORD_EPOCH_MS
from herwa.json_types import Json

Parser = Callable[[Json], None]


class Tombstones:
    def __init__(self) -> None:
        self._deleted: set[int] = set()
        self._resumed_floor: dict[int, int] = {}  # guild -> first snowflake backfill may read
        # Called with servers that just became deleted: the bot drops their live state.
        self.on_deleted: Callable[[set[int]], None] | None = None
        self._changes = 0  # by this pod's commands

    def __contains__(self, guild_id: object) -> bool:
        return guild_id in self._deleted

    def deleted(self, guild_id: int) -> None:
        self._changes += 1
        floors = {k: v for k, v in self._resumed_floor.items() if k != guild_id}
        self._apply(self._deleted | {guild_id}, floors)

    def resumed(self, guild_id: int, at: datetime) -> None:
        self._changes += 1
        self._apply(self._deleted - {guild_id}, {**self._resumed_floor, guild_id: _snowflake(at)})

    async def load(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        seen = self._changes
        rows = await conn.fetch("SELECT guild_id, resumed_at FROM guild_tombstones")
        if seen != self._changes:
            return  # a command of this pod changed them during the read: the read is older
        self._apply(
            {int(r["guild_id"]) for r in rows if r["resumed_at"] is None},
            {int(r["guild_id"]): _snowflake(r["resumed_at"]) for r in rows if r["resumed_at"]},
        )

    def backfill_floor(self, guild_id: int, floor: int) -> int | None:
        """The message id backfill may read from (``floor`` or later); None: read nothing."""
        if guild_id in self._deleted:
            return None
        return max(floor, self._resumed_floor.get(guild_id, 0))

    def honoured(self, parser: Parser) -> Parser:
        """``parser``, skipped for events of a deleted server."""
        deleted = self._deleted

        def run(d: Json) -> None:
            if deleted and _guild_of(d) in deleted:
                return
            parser(d)

        return run

    def _apply(self, deleted: set[int], floors: dict[int, int]) -> None:
        new = deleted - self._deleted
        # Mutated in place: the parsers built by honoured() hold this very set.
        self._deleted.intersection_update(deleted)
        self._deleted.update(deleted)
        self._resumed_floor = floors
        if new and self.on_deleted is not None:
            self.on_deleted(new)


def _guild_of(d: Json) -> int | None:
    try:
        return int(d["guild_id"])
    except (KeyError, TypeError, ValueError):
        return None


def _snowflake(at: datetime) -> int:
    return int(at.timestamp() * 1000 - DISCORD_EPOCH_MS) << 22
