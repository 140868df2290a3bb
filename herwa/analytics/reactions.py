"""Reactions over a range: the most reacted messages and the emoji used most.

A reaction counts where it was *added* (``message_reactions`` rows with event ``add``, by the
bot's receive time); a removal is recorded beside it and shown as such, but does not unsay that
someone reacted. Moderators clearing a message's reactions name no member and are not recorded
(bot/gateway.py). Messages deleted since are left out of the ranking (their link leads nowhere);
their reactions still count in the totals. A :class:`ChannelScope` limits every figure to the
channels the asking member may see.
"""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from herwa.analytics._query import NOT_DELETED, SINCE, UNTIL, params, rows
from herwa.analytics.leaderboards import _IN_SCOPE, _UNSCOPED, ChannelScope

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class ReactedMessage:
    message_id: int
    channel_id: int
    reactions: int  # added in the range
    reactors: int  # distinct members who added one


@dataclass(frozen=True)
class EmojiUse:
    emoji: str  # a custom emoji's id, else the unicode emoji
    name: str  # a custom emoji's name ('' for unicode)
    reactions: int


@dataclass(frozen=True)
class Reactions:
    added: int
    removed: int
    reactors: int
    messages: list[ReactedMessage]
    emoji: list[EmojiUse]


_RANGE = f"""
    guild_id = {{guild_id:UInt64}} AND at >= {SINCE} AND at < {UNTIL} AND {_IN_SCOPE}
"""
# One statement: the totals, the top messages and the top emoji, told apart by the first column.
_REACTIONS = f"""
    SELECT 'total', 0, 0, '', '', countIf(event = 'add'), countIf(event = 'remove'),
           uniqExactIf(user_id, event = 'add')
    FROM message_reactions FINAL WHERE {_RANGE}
    UNION ALL
    SELECT * FROM (
        SELECT 'message', message_id, any(channel_id), '', '', countIf(event = 'add') AS n, 0,
               uniqExactIf(user_id, event = 'add')
        FROM message_reactions FINAL WHERE {_RANGE} AND {NOT_DELETED}
        GROUP BY message_id HAVING n > 0 ORDER BY n DESC, message_id LIMIT {{limit:UInt32}})
    UNION ALL
    SELECT * FROM (
        SELECT 'emoji', 0, 0, emoji, any(emoji_name), countIf(event = 'add') AS n, 0, 0
        FROM message_reactions FINAL WHERE {_RANGE}
        GROUP BY emoji HAVING n > 0 ORDER BY n DESC, emoji LIMIT {{limit:UInt32}})
    SETTINGS do_not_merge_across_partitions_select_final = 1
"""


async def reactions(
    client: AsyncClient,
    guild_id: int,
    since: datetime,
    until: datetime,
    *,
    limit: int = 10,
    scope: ChannelScope | None = None,
) -> Reactions:
    where = scope.parameters() if scope is not None else _UNSCOPED
    p = params(guild_id, since, until, limit=limit, **where)
    added = removed = reactors = 0
    messages: list[ReactedMessage] = []
    emoji: list[EmojiUse] = []
    for part, mid, cid, key, name, n, m, users in await rows(client, _REACTIONS, p):
        if part == "total":
            added, removed, reactors = int(n), int(m), int(users)
        elif part == "message":
            messages.append(ReactedMessage(int(mid), int(cid), int(n), int(users)))
        else:
            emoji.append(EmojiUse(str(key), str(name), int(n)))
    messages.sort(key=lambda r: (-r.reactions, r.message_id))
    emoji.sort(key=lambda e: (-e.reactions, e.emoji))
    return Reactions(added, removed, reactors, messages, emoji)
