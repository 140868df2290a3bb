"""Backfill's pending marker: kept until the backfilled rows are committed, so a pod that dies
while Postgres is down leaves the work to the shard's next owner."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from herwa.bot.app import BotApp
from herwa.bot.capture import snowflake_time
from herwa.bot.shard import ShardRunner
from herwa.config import BotSettings, DiscordSettings
from herwa.devstack import DevStack, Endpoints
from tests.bot.conftest import wait_for

pytestmark = pytest.mark.slow


async def test_backfill_keeps_its_marker_until_its_rows_are_committed(
    own_postgres: tuple[DevStack, Endpoints], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack, ep = own_postgres
    caplog.set_level(logging.WARNING, logger="herwa.bot.backfill")
    pool = await asyncpg.create_pool(ep.postgres_dsn, min_size=0, max_size=2)
    redis = Redis.from_url(ep.redis_url)
    app = BotApp(
        settings=BotSettings(),
        discord_settings=DiscordSettings(),
        pool=pool,
        redis=redis,
        prefix=f"t{uuid.uuid4().hex[:8]}:",
        pod="bot-0",
        token="token",
        shard_count=1,
        max_concurrency=1,
    )
    backfiller = app.backfiller
    backfiller.flush_timeout = 0.5
    guild = 81_000_000_000_000_000
    message = guild + 1
    runner = ShardRunner(app, 0, "lease")
    app.buffer.start()
    try:
        # A message the backfill has read, still in the buffer when Postgres goes away.
        app.buffer.add(
            "message_events",
            (message, guild, 7, None, 9, snowflake_time(message), "text", False, "backfill"),
        )
        await asyncio.to_thread(stack.down)
        task = asyncio.create_task(backfiller._tracked(runner, guild, message))

        async def flush_failed() -> bool:
            return task.done() or any("not committed" in r.message for r in caplog.records)

        await wait_for(flush_failed, 60, "the backfill's flush to fail")
        # The pod dies here (its shard is cancelled) before Postgres is back: the marker must
        # still name the guild, or the message is never backfilled again.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pending = await redis.hgetall(backfiller.pending_key)
        assert pending == {str(guild).encode(): str(message).encode()}

        # The next owner of the shard finishes it once Postgres is back.
        await asyncio.to_thread(stack.up)
        await backfiller.resume_pending(runner)

        async def finished() -> bool:
            return not await redis.hgetall(backfiller.pending_key)

        await wait_for(finished, 30, "the resumed backfill to finish")
        stored = await pool.fetchval(
            "SELECT created_at FROM message_events WHERE message_id = $1", message
        )
        assert stored == snowflake_time(message)
        assert stored < datetime.now(UTC)
    finally:
        await backfiller.cancel()
        await app.buffer.close(5.0)
        await pool.close()
        await redis.aclose()
