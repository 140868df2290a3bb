"""Fixtures that give a test stores with the whole Herwa schema applied."""

from __future__ import annotations

import pytest

from herwa.devstack import Endpoints
from herwa.schema import migrate


@pytest.fixture
async def migrated(endpoints: Endpoints) -> Endpoints:
    """Fresh, empty Postgres and ClickHouse databases at the newest schema version."""
    await migrate(endpoints.postgres_dsn, endpoints.clickhouse_url)
    return endpoints
