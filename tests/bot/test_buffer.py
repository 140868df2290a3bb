"""The row buffer against a real Postgres: triggers, idempotence, outage, back-pressure."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from herwa.bot.buffer import FlushBuffer
from herwa.devstack import Endpoints
from tests.bot.proxy import TcpProxy

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def message(i: int) -> tuple[object, ...]:
    return (10_000 + i, 1, 2, None, 3, T0 + timedelta(seconds=i), "text", False, "gateway")


async def count(dsn: str, table: str = "message_events") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await conn.close()


async def wait_until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        if await pred():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_size_trigger_flushes_before_the_interval(migrated: Endpoints) -> None:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=2)
    buf = FlushBuffer(pool, interval=30.0, max_rows=100, capacity=10_000)
    buf.start()
    try:
        for i in range(100):
            buf.add("message_events", message(i))
        started = time.monotonic()
        await wait_until(lambda: _eq(migrated.postgres_dsn, 100))
        assert time.monotonic() - started < 5.0
    finally:
        await buf.close(5.0)
        await pool.close()


async def _eq(dsn: str, n: int, table: str = "message_events") -> bool:
    return await count(dsn, table) == n


async def test_time_trigger_and_retried_batches_never_duplicate(migrated: Endpoints) -> None:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=2)
    buf = FlushBuffer(pool, interval=0.2, max_rows=5000, capacity=10_000)
    buf.start()
    try:
        for i in range(10):
            buf.add("message_events", message(i))
        await wait_until(lambda: _eq(migrated.postgres_dsn, 10), timeout=3.0)
        # The same natural ids again (a retried batch, a backfill overlap): no new rows.
        for i in range(10):
            buf.add("message_events", message(i))
        buf.add("member_events", (1, 5, "join", T0, T0, False))
        buf.add("member_events", (1, 5, "join", T0, T0, False))
        assert await buf.flush(5.0)
        assert await count(migrated.postgres_dsn) == 10
        assert await count(migrated.postgres_dsn, "member_events") == 1
    finally:
        await buf.close(5.0)
        await pool.close()


async def test_opted_out_members_rows_are_never_staged(migrated: Endpoints) -> None:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=1, max_size=2)
    buf = FlushBuffer(pool, interval=30.0, max_rows=5000, capacity=10_000)
    buf.start()
    try:
        await pool.execute("INSERT INTO opt_outs (guild_id, user_id) VALUES (1, 3), (1, 7)")
        for i in range(4):  # author 3 in guild 1: opted out
            buf.add("message_events", message(i))
        buf.add("message_events", (20_000, 1, 2, None, 4, T0, "text", False, "gateway"))
        buf.add("message_events", (20_001, 9, 2, None, 3, T0, "text", False, "gateway"))
        for n, user in ((1, 7), (2, 8)):
            session = (f"00000000-0000-0000-0000-00000000000{n}", 1, 50, user, "voice", T0, T0)
            buf.add("voice_sessions", (*session, 0.0, "leave", False))
        buf.add("member_events", (1, 7, "join", T0, T0, False))
        buf.add("member_events", (1, 8, "join", T0, T0, False))
        # Rows without a member are kept whoever they concern.
        buf.add("guild_events", (1, "join", T0, 10))
        assert await buf.flush(5.0)
        staged = await pool.fetch("SELECT guild_id, author_id FROM message_events ORDER BY 1, 2")
        # The same user in another guild, and another user in the same guild, are recorded.
        assert [tuple(r) for r in staged] == [(1, 4), (9, 3)]
        assert await pool.fetchval("SELECT array_agg(user_id) FROM voice_sessions") == [8]
        assert await pool.fetchval("SELECT array_agg(user_id) FROM member_events") == [8]
        assert await count(migrated.postgres_dsn, "guild_events") == 1
        # After an opt-in, the member's events are recorded again.
        await pool.execute("DELETE FROM opt_outs WHERE guild_id = 1 AND user_id = 3")
        buf.add("message_events", message(9))
        assert await buf.flush(5.0)
        assert await count(migrated.postgres_dsn) == 3
    finally:
        await buf.close(5.0)
        await pool.close()


@pytest.fixture
async def proxied(migrated: Endpoints) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test's Postgres (cut it to simulate an outage) and the DSN
    that goes through it."""
    parts = urllib.parse.urlsplit(migrated.postgres_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        yield (
            proxy,
            urllib.parse.urlunsplit(
                parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}")
            ),
        )
    finally:
        await proxy.stop()


async def test_postgres_outage_keeps_rows_pushes_back_and_loses_nothing(
    migrated: Endpoints, proxied: tuple[TcpProxy, str]
) -> None:
    proxy, dsn = proxied
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2, timeout=2.0)
    buf = FlushBuffer(pool, interval=0.1, max_rows=500, capacity=2_000, backoff_max=0.5)
    buf.start()
    try:
        proxy.cut()
        produced = 0

        async def produce() -> None:
            nonlocal produced
            for i in range(5_000):
                await buf.wait_for_room()
                buf.add("message_events", message(i))
                produced += 1
                if i % 100 == 0:
                    await asyncio.sleep(0)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(1.5)
        # Blocked by back-pressure, memory bounded near capacity, nothing written, nothing lost.
        assert not producer.done()
        assert 2_000 <= buf.depth <= 2_001
        assert produced == buf.depth
        proxy.restore()
        await asyncio.wait_for(producer, 20.0)
        assert await buf.flush(20.0)
        assert await count(migrated.postgres_dsn) == 5_000
    finally:
        await buf.close(5.0)
        await pool.close()


async def test_rows_left_after_the_grace_period_are_counted_per_table(
    proxied: tuple[TcpProxy, str],
) -> None:
    proxy, dsn = proxied
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2, timeout=1.0)
    buf = FlushBuffer(pool, interval=0.05, max_rows=500, capacity=2_000, backoff_max=0.2)
    before = {t: _dropped(t) for t in ("message_events", "guild_events")}
    buf.start()
    try:
        proxy.cut()
        for i in range(30):
            buf.add("message_events", message(i))
        buf.add("guild_events", (1, "join", T0, 10))
        # Postgres stays unreachable for the whole grace period: the shutdown reports failure
        # and every row it gives up on is counted under its own table.
        assert not await buf.close(1.0)
        assert _dropped("message_events") - before["message_events"] == 30
        assert _dropped("guild_events") - before["guild_events"] == 1
    finally:
        await pool.close()


def _dropped(table: str) -> float:
    value = REGISTRY.get_sample_value("herwa_bot_rows_dropped_total", {"table": table})
    assert value is not None, table
    return value
