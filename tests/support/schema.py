"""Fixtures that give a test stores with the whole Herwa schema applied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from herwa.devstack import Endpoints
from herwa.schema import migrate


@pytest.fixture
async def migrated(endpoints: Endpoints) -> Endpoints:
    """Fresh, empty Postgres and ClickHouse databases at the newest schema version."""
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    return endpoints


@pytest.fixture
async def pg(migrated: Endpoints) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the migrated Postgres database, closed after the test."""
    conn = await asyncpg.connect(migrated.postgres_dsn)
    yield conn
    await conn.close()
