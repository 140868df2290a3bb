"""Online members by hour on constructed presence transitions, loaded by the real ETL: a member
online since before the range, one online for a microsecond across no hour boundary, one who is
only ever offline, one after the range; in UTC and in a half-hour zone; another guild's rows
never counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from herwa import analytics
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


def Z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


G = 1
# (user, at, status, activity-type bits)
TRANSITIONS = [
    (1, "2024-03-04 09:50", "online", 0),
    (1, "2024-03-04 10:20", "idle", 1),
    (1, "2024-03-04 12:05", "offline", 0),
    (2, "2024-03-04 07:00", "online", 4),  # before the range, never changed
    (3, "2024-03-04 10:59:59.999999", "dnd", 0),
    (3, "2024-03-04 11:00", "offline", 0),
    (4, "2024-03-04 10:30", "offline", 0),
    (5, "2024-03-04 13:10", "online", 0),  # after the range
]
SINCE, UNTIL = Z("2024-03-04 08:00"), Z("2024-03-04 13:00")


@pytest.fixture
async def ro(migrated: Endpoints) -> AsyncIterator[AsyncClient]:
    pg = await asyncpg.connect(migrated.postgres_dsn)
    try:
        rows = [(G, u, Z(at), s, t) for u, at, s, t in TRANSITIONS]
        # Guild 2: everyone online all day; none of it may reach guild 1's figures.
        rows += [(2, u, Z("2024-03-04 00:00"), "online", 0) for u in range(1, 50)]
        await pg.executemany(
            "INSERT INTO presence_events (guild_id, user_id, at, status, activity_types)"
            " VALUES ($1, $2, $3, $4, $5)",
            rows,
        )
        await run_once(
            migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions(batch_rows=1000)
        )
    finally:
        await pg.close()
    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    yield client
    await client.close()


async def test_online_members_by_hour_utc_and_kolkata(ro: AsyncClient) -> None:
    utc = await analytics.online_by_hour(ro, G, "UTC", SINCE, UNTIL)
    assert [(h.start.astimezone(UTC).hour, h.members) for h in utc] == [
        (8, 1),  # 2
        (9, 2),  # 1, 2
        (10, 3),  # 1, 2, 3
        (11, 2),  # 1, 2 (3 went offline at 11:00 sharp)
        (12, 2),  # 1 until 12:05, 2
    ]
    assert all(h.start.tzinfo == ZoneInfo("UTC") for h in utc)
    # Kolkata's hours begin at half past the UTC hour; the first one is cut at the range start.
    ist = await analytics.online_by_hour(ro, G, "Asia/Kolkata", SINCE, UNTIL)
    assert [(f"{h.start:%H:%M}", h.members) for h in ist] == [
        ("13:00", 1),  # 07:30-08:30 UTC, from 08:00: 2
        ("14:00", 1),  # 08:30-09:30: 2
        ("15:00", 2),  # 09:30-10:30: 1, 2
        ("16:00", 3),  # 10:30-11:30: 1, 2, 3
        ("17:00", 2),  # 11:30-12:30: 1, 2
        ("18:00", 1),  # 12:30-13:00: 2 (1 went offline at 12:05)
    ]
    assert await analytics.online_by_hour(ro, 3, "UTC", SINCE, UNTIL) == []
