"""What the rollups must hold, computed from the raw rows (for tests of several packages)."""

from __future__ import annotations

# Per UTC week and author: live messages, first and last (seconds), from the messages themselves,
# what message_activity_weekly must hold.
RAW_WEEKS = """
    SELECT toMonday(created_at) AS week, author_id, toUInt32(count()),
           toDateTime(min(created_at), 'UTC'), toDateTime(max(created_at), 'UTC')
    FROM messages FINAL
    WHERE guild_id = {g:UInt64} AND message_id NOT IN (
        SELECT message_id FROM message_deletions WHERE guild_id = {g:UInt64})
    GROUP BY week, author_id
    ORDER BY week, author_id
"""
