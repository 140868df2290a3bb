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

# One statement, one round trip: ClickHouse runs the parts side by side. FINAL collapses rows
# within each monthly partition only, which is exact because no key spans two partitions: the
# rollups', member_events' and message_reactions' partition keys are months of a sort-key
# column, and a voice session's joined_at is set when it opens and is the same in every version
# of its row.
#
# Messages come from the 15-minute rollup (exact at every real zone's midnight), the active
# members from one row per author and UTC day (message_activity_author_days): a day cut by the
# range's start or end holds an author active in it when their last message that day is at or
# after the start, or their first before the end. A range inside one UTC day that touches
# neither midnight (shorter than a day, so never a command's) is the one case those two times
# cannot decide; it reads the hourly rollup instead, whose hours bound it as they always did.
# The branch not taken is given an empty time range, so the primary key skips all of it.
_WITHIN_ONE_DAY = (
    f"(toDate({SINCE}) = toDate({UNTIL} - 1) AND {SINCE} > toStartOfDay({SINCE})"
    f" AND {UNTIL} < toStartOfDay({SINCE}) + 86400)"
)
_OVERVIEW = f"""
    SELECT 'messages', toFloat64(sum(messages)), toUInt64(0)
    FROM message_activity_15m FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND bucket >= {SINCE} AND bucket < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    UNION ALL
    SELECT 'active', 0, uniqExact(author_id)
    FROM message_activity_author_days FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND day >= toDate({SINCE})
      AND day < if({_WITHIN_ONE_DAY}, toDate({SINCE}), toDate({UNTIL} - 1) + 1)
      AND messages > 0 AND last_at >= {SINCE} AND first_at < {UNTIL}
      AND (NOT is_bot OR {{bots:Bool}})
    UNION ALL
    SELECT 'active', 0, uniqExactIf(author_id, messages > 0)
    FROM message_activity_hourly FINAL
    WHERE guild_id = {{guild_id:UInt64}} AND hour >= {SINCE}
      AND hour < if({_WITHIN_ONE_DAY}, {UNTIL}, {SINCE}) AND (NOT is_bot OR {{bots:Bool}})
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
    parts: dict[str, tuple[float, int]] = {}
    for part, a, b in await rows(client, _OVERVIEW, p):
        # Both "active" parts answer; the one whose range is not its own answers zero.
        before = parts.get(part, (0.0, 0))
        parts[part] = (before[0] + float(a), before[1] + int(b))
    (messages, _), (_, active) = parts["messages"], parts["active"]
    (voice, voice_members), (joins, leaves) = parts["voice"], parts["members"]
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
