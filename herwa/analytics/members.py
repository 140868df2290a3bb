"""A guild's overview and one member's summary over a range."""

# ruff: noqa: S608 - only constant SQL fragments are composed; every value is a bound parameter.

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from herwa.analytics._query import SINCE, UNTIL, params, rows
from herwa.analytics.leaderboards import VOICE_SECONDS

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


@dataclass(frozen=True)
class MemberSummary:
    user_id: int
    messages: int
    active_hours: int  # distinct UTC hours with at least one message
    channels: int
    voice_seconds: float
    voice_sessions: int
    first_joined: datetime | None  # first join seen, ever (not limited to the range)


@dataclass(frozen=True)
class Overview:
    messages: int
    active_members: int
    voice_seconds: float
    voice_members: int
    joins: int
    leaves: int
    reactions: int = 0  # added in the range (herwa/analytics/reactions.py)


_MEMBER_MESSAGES = f"""
    SELECT sum(messages), uniqExactIf(hour, messages > 0), uniqExactIf(channel_id, messages > 0)
    FROM message_activity_hourly FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND author_id = {{user_id:UInt64}}
      AND hour >= {SINCE} AND hour < {UNTIL}
"""
_MEMBER_VOICE = f"""
    SELECT sum({VOICE_SECONDS}), count()
    FROM voice_sessions FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND user_id = {{user_id:UInt64}}
      AND joined_at < {UNTIL} AND left_at > {SINCE}
"""
_MEMBER_JOIN = """
    SELECT min(at), count() FROM member_events FINAL
    WHERE guild_id = {guild_id:UInt64} AND user_id = {user_id:UInt64} AND event = 'join'
"""

# One statement, one round trip: ClickHouse runs the four parts side by side. FINAL
# collapses rows within each monthly partition only, which is exact because no key spans two
# partitions: the hourly rollup's, member_events' and message_reactions' partition keys are
# months of a sort-key column, and a voice session's joined_at is set when it opens and is the
# same in every version of its row.
_OVERVIEW = f"""
    SELECT 'messages', toFloat64(sum(messages)), uniqExactIf(author_id, messages > 0)
    FROM message_activity_hourly FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND hour >= {SINCE} AND hour < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    UNION ALL
    SELECT 'voice', toFloat64(sum({VOICE_SECONDS})), uniqExact(user_id)
    FROM voice_sessions FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND joined_at < {UNTIL} AND left_at > {SINCE}
      AND (NOT is_bot OR {{bots:Bool}})
    UNION ALL
    SELECT 'members', toFloat64(countIf(event = 'join')), countIf(event = 'leave')
    FROM member_events FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND at >= {SINCE} AND at < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    UNION ALL
    SELECT 'reactions', toFloat64(countIf(event = 'add')), countIf(event = 'remove')
    FROM message_reactions FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND at >= {SINCE} AND at < {UNTIL}
    SETTINGS do_not_merge_across_partitions_select_final = 1
"""


async def member_summary(
    client: AsyncClient, guild_id: int, user_id: int, since: datetime, until: datetime
) -> MemberSummary:
    p = params(guild_id, since, until, user_id=user_id)
    ((messages, hours, channels),) = await rows(client, _MEMBER_MESSAGES, p)
    ((voice, sessions),) = await rows(client, _MEMBER_VOICE, p)
    ((first, joins),) = await rows(client, _MEMBER_JOIN, p)
    first_joined = None
    if int(joins):
        first_joined = first if first.tzinfo else first.replace(tzinfo=UTC)
    return MemberSummary(
        user_id,
        int(messages),
        int(hours),
        int(channels),
        float(voice),
        int(sessions),
        first_joined,
    )


async def overview(
    client: AsyncClient,
    guild_id: int,
    since: datetime,
    until: datetime,
    *,
    include_bots: bool = False,
) -> Overview:
    p = params(guild_id, since, until, bots=include_bots)
    parts = {part: (a, b) for part, a, b in await rows(client, _OVERVIEW, p)}
    (messages, active), (voice, voice_members) = parts["messages"], parts["voice"]
    joins, leaves = parts["members"]
    reactions, _removed = parts["reactions"]
    return Overview(
        int(messages),
        int(active),
        float(voice),
        int(voice_members),
        int(joins),
        int(leaves),
        int(reactions),
    )
