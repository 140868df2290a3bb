"""Discord snowflakes: ids whose high bits are a millisecond timestamp.

discord.py derives ``created_at`` from the id and routes guilds to shards by its timestamp bits,
so every id the simulator hands out must carry the time the object was "created".
"""

from __future__ import annotations

import datetime as dt

DISCORD_EPOCH_MS = 1_420_070_400_000


def snowflake_time_ms(snowflake: int) -> int:
    return (snowflake >> 22) + DISCORD_EPOCH_MS


def iso_from_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


class SnowflakeFactory:
    """Monotonic ids, like one Discord worker process.

    The 12-bit increment resets every millisecond; more than 4096 ids in one millisecond borrow
    the next millisecond rather than wrap, so ids stay unique and ordered.
    """

    def __init__(self, worker: int = 1, process: int = 0) -> None:
        self._bits = ((worker & 0x1F) << 17) | ((process & 0x1F) << 12)
        self._last_ms = -1
        self._inc = 0
        self._exact: dict[int, int] = {}

    def make(self, ms: int) -> int:
        # Never backwards: a caller whose clock lags reuses the last millisecond. Streams that
        # need past timestamps (historical backlog) use their own factory and go forwards too.
        if ms > self._last_ms:
            self._last_ms = ms
            self._inc = 0
        else:
            self._inc += 1
            if self._inc > 0xFFF:
                self._last_ms += 1
                self._inc = 0
        return ((self._last_ms - DISCORD_EPOCH_MS) << 22) | self._bits | self._inc

    @property
    def last_ms(self) -> int:
        return self._last_ms

    def at(self, ms: int) -> int:
        """An id with exactly this timestamp (for world objects created at arbitrary past
        times: account creation, guild creation). Unique per factory."""
        inc = self._exact.get(ms, 0)
        if inc > 0xFFF:
            raise ValueError(f"more than 4096 ids at {ms}")
        self._exact[ms] = inc + 1
        return ((ms - DISCORD_EPOCH_MS) << 22) | self._bits | inc
