"""Clients for the three stores, created from settings the same way by every role.

Each role creates one Postgres pool, one Redis client and one ClickHouse client at start-up and
closes them on shutdown; nothing else in the code base opens connections of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import clickhouse_connect
from pydantic import SecretStr
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from herwa.config import ClickHouseSettings, PostgresSettings, RedisSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def rows_affected(status: str) -> int:
    """The row count of an asyncpg command tag, e.g. "INSERT 0 3" or "DELETE 2"."""
    return int(status.rsplit(" ", 1)[-1])


async def postgres_pool(settings: PostgresSettings, **kwargs: Any) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        _secret(settings.dsn),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_seconds,
        **kwargs,
    )


async def postgres_connection(dsn: SecretStr | str, timeout: float = 10.0) -> asyncpg.Connection:
    return await asyncpg.connect(_secret(dsn), timeout=timeout)


def redis_client(settings: RedisSettings, *, socket_timeout: float | None = None) -> Redis:
    """``socket_timeout`` (default: the configured one) bounds every call and connect."""
    timeout = settings.socket_timeout_seconds if socket_timeout is None else socket_timeout
    # A burst of commands waits for a free connection instead of failing with
    # MaxConnectionsError, which the default pool raises once every connection is busy.
    # One retry on a fresh connection: after Redis restarts every pooled connection is dead,
    # and without it the first command on each of them fails (a slash command left unanswered).
    pool = BlockingConnectionPool.from_url(
        _secret(settings.url),
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_seconds,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis(connection_pool=pool, decode_responses=False)


async def clickhouse_client(
    settings: ClickHouseSettings, *, readonly: bool = False, **kwargs: Any
) -> AsyncClient:
    """A ClickHouse client; ``readonly`` picks the read-only user for user-facing queries."""
    url = settings.query_url() if readonly else settings.url
    return await clickhouse_url_client(
        url,
        connect_timeout=settings.connect_timeout_seconds,
        send_receive_timeout=settings.query_timeout_seconds,
        **kwargs,
    )


async def clickhouse_url_client(url: SecretStr | str, **kwargs: Any) -> AsyncClient:
    client: AsyncClient = await clickhouse_connect.get_async_client(dsn=_secret(url), **kwargs)
    return client
