"""Message and voice leaderboards, and per-channel statistics.

Message figures come from the hourly rollup: ``since``/``until`` act at whole UTC hours.
Voice figures come from ``voice_sessions`` (one row per session, small next to messages), with
each session clipped to the range so a session crossing a bound counts only its inside part.
A :class:`ChannelScope` limits every figure to the channels the asking member may see.
"""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from herwa.analytics._query import SINCE, UNTIL, params, rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class Entry:
    user_id: int
    value: float  # messages, or voice seconds


@dataclass(frozen=True)
class ChannelScope:
    """Channels whose activity an answer may include: the ``viewable`` ones and, when
    ``unlisted`` is set, every channel not in ``listed`` (channels the server no longer has)."""

    viewable: frozenset[int]
    listed: frozenset[int]
    unlisted: bool

    def parameters(self) -> dict[str, object]:
        return {
            "scoped": True,
            "viewable": sorted(self.viewable),
            "listed": sorted(self.listed),
            "unlisted": self.unlisted,
        }


_UNSCOPED: dict[str, object] = {"scoped": False, "viewable": [], "listed": [], "unlisted": False}
_IN_SCOPE = """
    (NOT {scoped:Bool} OR has({viewable:Array(UInt64)}, channel_id)
     OR ({unlisted:Bool} AND NOT has({listed:Array(UInt64)}, channel_id)))
"""


@dataclass(frozen=True)
class ChannelStats:
    channel_id: int
    messages: int
    authors: int


_MESSAGES = f"""
    SELECT author_id, sum(messages) AS n
    FROM message_activity_hourly FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND hour >= {SINCE} AND hour < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}}) AND {_IN_SCOPE}
      AND NOT has({{hidden:Array(UInt64)}}, author_id)
    GROUP BY author_id HAVING n > 0
    ORDER BY n DESC, author_id LIMIT {{limit:UInt32}}
"""

VOICE_SECONDS = f"""
    greatest(0, dateDiff('millisecond', greatest(joined_at, {SINCE}),
                         least(left_at, {UNTIL}))) / 1000
"""

_VOICE = f"""
    SELECT user_id, sum({VOICE_SECONDS}) AS seconds
    FROM voice_sessions FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND joined_at < {UNTIL} AND left_at > {SINCE}
      AND (NOT is_bot OR {{bots:Bool}}) AND {_IN_SCOPE}
      AND NOT has({{hidden:Array(UInt64)}}, user_id)
    GROUP BY user_id HAVING seconds > 0
    ORDER BY seconds DESC, user_id LIMIT {{limit:UInt32}}
"""

_CHANNELS = f"""
    SELECT channel_id, sum(messages) AS n, uniqExactIf(author_id, messages > 0) AS authors
    FROM message_activity_hourly FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND hour >= {SINCE} AND hour < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}}) AND {_IN_SCOPE}
    GROUP BY channel_id HAVING n > 0
    ORDER BY n DESC, channel_id
"""


def channel_stats_sql() -> str:
    """(channel_id, n messages, authors), most messages first; the Grafana top channels panel
    runs this same statement, unscoped (herwa.analytics.dashboard). Parameters: guild_id,
    since, until, bots, and the scope's (see :meth:`ChannelScope.parameters`)."""
    return _CHANNELS


async def leaderboard(
    client: AsyncClient,
    guild_id: int,
    since: datetime,
    until: datetime,
    *,
    kind: Literal["messages", "voice"] = "messages",
    limit: int = 10,
    include_bots: bool = False,
    scope: ChannelScope | None = None,
    hidden: Collection[int] = (),
) -> list[Entry]:
    """Members ranked by ``kind``; ``hidden`` members (who asked not to be named) are left
    out of the ranking, and everyone below them moves up."""
    sql = _MESSAGES if kind == "messages" else _VOICE
    where = scope.parameters() if scope is not None else _UNSCOPED
    p = params(
        guild_id, since, until, bots=include_bots, limit=limit, hidden=sorted(hidden), **where
    )
    return [Entry(int(user), float(value)) for user, value in await rows(client, sql, p)]


async def channel_stats(
    client: AsyncClient,
    guild_id: int,
    since: datetime,
    until: datetime,
    *,
    include_bots: bool = False,
    scope: ChannelScope | None = None,
) -> list[ChannelStats]:
    where = scope.parameters() if scope is not None else _UNSCOPED
    p = params(guild_id, since, until, bots=include_bots, **where)
    return [
        ChannelStats(int(c), int(n), int(a))
        for c, n, a in await rows(client, channel_stats_sql(), p)
    ]
