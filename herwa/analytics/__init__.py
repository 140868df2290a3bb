"""Analytics queries over ClickHouse, shared by the bot's slash commands and the dashboards.

Every function takes a (read-only) ClickHouse client and binds the guild id as a query
parameter (``{guild_id:UInt64}``), never by string formatting. All reads use FINAL, deleted
messages are never counted, and bots are excluded unless ``include_bots=True``. Long ranges read
the ETL-maintained rollups (``message_activity_15m`` / ``_hourly`` / ``_daily``).
"""

from herwa.analytics.daily import DayActivity, daily
from herwa.analytics.growth import GrowthPoint, growth
from herwa.analytics.heatmap import DAYS, Heatmap, heatmap
from herwa.analytics.leaderboards import (
    ChannelScope,
    ChannelStats,
    Entry,
    channel_stats,
    leaderboard,
)
from herwa.analytics.members import MemberSummary, Overview, member_summary, overview
from herwa.analytics.presence import OnlineHour, online_by_hour
from herwa.analytics.reactions import EmojiUse, ReactedMessage, Reactions, reactions
from herwa.analytics.retention import Cohort, retention

__all__ = [
    "DAYS",
    "ChannelScope",
    "ChannelStats",
    "Cohort",
    "DayActivity",
    "EmojiUse",
    "Entry",
    "GrowthPoint",
    "Heatmap",
    "MemberSummary",
    "OnlineHour",
    "Overview",
    "ReactedMessage",
    "Reactions",
    "channel_stats",
    "daily",
    "growth",
    "heatmap",
    "leaderboard",
    "member_summary",
    "online_by_hour",
    "overview",
    "reactions",
    "retention",
]
