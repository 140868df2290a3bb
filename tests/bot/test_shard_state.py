"""Shard state committed with the rows (postgres migration 0009): the epoch fence between an
old and a new owner of one shard, through real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from redis.asyncio import Redis

from herwa.bot.app import BotApp
from herwa.bot.capture import snowflake_time
from herwa.bot.shard import ShardRunner
from herwa.bot.voice import OpenSession, VoiceOp
from herwa.config import BotSettings, DiscordSettings

GUILD = 81_000_000_000_000_000
USER = 90_000_000_000_000_001


async def _owner(pool: asyncpg.Pool, redis: Redis, pod: str) -> BotApp:
    """A pod that has just taken shard 0 of 1: its runner loaded the shard's state."""
    app = BotApp(
        settings=BotSettings(),
        discord_settings=DiscordSettings(),
        pool=pool,
        redis=redis,
        prefix="t:",
        pod=pod,
        token="token",
        shard_count=1,
        max_concurrency=1,
    )
    runner = ShardRunner(app.shard_deps, 0, f"{pod}:lease")
    await runner.load_state()
    app.runners[0] = runner
    return app


def _capture(app: BotApp, received: datetime) -> None:
    """What one pod's shard made of the same events: a message, a member's join and leave
    (the leave stamped with this pod's receive time) and a voice session opened."""
    message = GUILD + 5
    buf = app.buffer
    buf.add(
        "message_events",
        (message, GUILD, 7, None, USER, snowflake_time(message), "text", False, "gateway"),
    )
    joined = datetime(2026, 1, 1, tzinfo=UTC)
    buf.add("member_events", (GUILD, USER, "join", joined, snowflake_time(USER), False))
    buf.add("member_events", (GUILD, USER, "leave", received, snowflake_time(USER), False))
    session = OpenSession(8, received.timestamp(), False, False)
    buf.add_extra(VoiceOp(0, GUILD, USER, session.dump()))


async def test_a_stale_owner_stages_no_receive_time_keyed_rows(
    stores: tuple[asyncpg.Pool, Redis],
) -> None:
    pool, redis = stores
    old = await _owner(pool, redis, "bot-0")
    new = await _owner(pool, redis, "bot-1")  # took the shard over: the epoch moved on
    assert (old.runners[0].epoch, new.runners[0].epoch) == (1, 2)
    received = datetime.now(UTC)

    # The old owner still flushes what it received before it noticed.
    _capture(old, received)
    assert await old.buffer.flush(10)
    rows = await pool.fetch("SELECT event FROM member_events ORDER BY event")
    assert [r["event"] for r in rows] == ["join"]  # Discord's own time: kept, merges later
    assert await pool.fetchval("SELECT count(*) FROM message_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM bot_voice_open") == 0

    # The new owner receives the same events again (RESUME) a little later: one leave.
    _capture(new, received + timedelta(seconds=2))
    assert await new.buffer.flush(10)
    rows = await pool.fetch("SELECT event, at FROM member_events ORDER BY event")
    assert [(r["event"], r["at"]) for r in rows][1:] == [("leave", received + timedelta(seconds=2))]
    assert len(rows) == 2
    assert await pool.fetchval("SELECT count(*) FROM message_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM bot_voice_open WHERE user_id = $1", USER) == 1
