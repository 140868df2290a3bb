"""Clients for the three stores, created from settings the same way by every role.

Each role creates one Postgres pool, one Redis client and one ClickHouse client at start-up and
closes them on shutdown; nothing else in the code base opens connections of its own.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError
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


class PullUnavailableError(RuntimeError):
    """ClickHouse cannot read from Postgres itself (the ETL's transfer "pull")."""


_POSTGRESQL_CONNECTION_FAILURE = 614  # ClickHouse's POSTGRESQL_CONNECTION_FAILURE
_PULL_HINT = (
    "let ClickHouse reach Postgres (HERWA_ETL_PULL_POSTGRES_DSN: Postgres as ClickHouse sees it)"
    " or set HERWA_ETL_TRANSFER=push (chart: etl.transfer)"
)


@dataclass(frozen=True)
class PullSource:
    """Postgres as ClickHouse connects to it, to read from it (the ETL's transfer "pull").

    ClickHouse's postgresql() takes a host, port, database, user and password, nothing else. The
    password goes in the statement's text as that function's fifth argument, which ClickHouse
    shows as '[HIDDEN]' in its process list and query log; never as a query parameter, which
    travels in the request's URL and so into ClickHouse's trace log and any proxy's.
    """

    address: str  # host:port
    database: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def from_dsn(cls, dsn: str) -> PullSource:
        parts = urllib.parse.urlsplit(dsn)
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise PullUnavailableError(
                f"the Postgres DSN's port is not a number; {_PULL_HINT}"
            ) from exc
        if not parts.hostname or "," in parts.netloc:
            raise PullUnavailableError(
                f"ClickHouse needs one Postgres host name in the DSN to pull from; {_PULL_HINT}"
            )
        if options := sorted(urllib.parse.parse_qs(parts.query)):
            raise PullUnavailableError(
                f"ClickHouse cannot apply the Postgres DSN's options ({', '.join(options)}: it"
                f" connects with libpq's defaults, sslmode=prefer); {_PULL_HINT}"
            )
        unquote = urllib.parse.unquote
        user = unquote(parts.username or "")
        return cls(
            address=f"{parts.hostname}:{port}",
            database=unquote(parts.path.lstrip("/")) or user,
            user=user,
            password=unquote(parts.password or ""),
        )

    @contextmanager
    def reaching(self, what: str) -> Iterator[None]:
        """Around a statement that reads from this source: ClickHouse's failure to connect
        becomes a :class:`PullUnavailableError` that says ``what`` failed and the way out."""
        try:
            yield
        except DatabaseError as exc:
            if exc.code != _POSTGRESQL_CONNECTION_FAILURE:
                raise
            raise PullUnavailableError(
                f"ClickHouse could not connect to Postgres at {self.address} {what}: {_PULL_HINT}"
            ) from exc

    def select(self, query: str) -> str:
        """A ClickHouse SELECT of every column of Postgres's ``query``."""
        address, database = _literal(self.address), _literal(self.database)
        user, password = _literal(self.user), _literal(self.password)
        source = f"postgresql({address}, {database}, query({_literal(query)}), {user}, {password})"
        return f"SELECT * FROM {source}"  # noqa: S608 - every value is a quoted literal

    async def probe(self, ch: AsyncClient, what: str) -> str:
        """Check, through ClickHouse, that this source can be pulled from; returns a detail.

        Raises :class:`PullUnavailableError` unless ClickHouse reaches Postgres, and unless that
        Postgres is a primary (a standby's snapshot lags: rows the claim saw could be missing)
        whose DateStyle renders ISO timestamps (the only ones ClickHouse reads back exactly)."""
        select = self.select(
            "SELECT pg_is_in_recovery() AS standby, current_setting('DateStyle') AS datestyle"
        )
        with self.reaching(what):
            result = await ch.query(select, settings=PULL_SETTINGS)
        ((standby, datestyle),) = result.result_rows
        if standby:
            raise PullUnavailableError(
                f"Postgres at {self.address} is a standby: ClickHouse must pull from the primary"
                f" {what}; {_PULL_HINT}"
            )
        if not str(datestyle).upper().startswith("ISO"):
            raise PullUnavailableError(
                f"Postgres at {self.address} renders timestamps as DateStyle {datestyle!r}, which"
                f" ClickHouse cannot read {what}: set it to 'ISO, YMD' for the database"
                f" (ALTER DATABASE … SET DateStyle) or set HERWA_ETL_TRANSFER=push"
            )
        return f"ClickHouse reads from Postgres at {self.address}"


def _literal(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# For every statement that reads from a PullSource: the columns come typed by Postgres
# (timestamps without a zone), which ClickHouse reads in the session's zone, so UTC whatever the
# server's; and its connection is closed after each statement rather than kept idle in Postgres.
PULL_SETTINGS: dict[str, object] = {
    "session_timezone": "UTC",
    "postgresql_connection_pool_auto_close_connection": 1,
}
