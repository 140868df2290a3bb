"""One real query per store, by URL, so that embedded and external servers are checked alike."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

from herwa.devstack._process import DevStackError

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion even when the caller is itself inside an event loop."""
    # A private thread gets its own loop; asyncio.run() would refuse inside pytest-asyncio tests.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _postgres_fetch(dsn: str, query: str, timeout: float) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        return await conn.fetchval(query, timeout=timeout)
    finally:
        await conn.close(timeout=timeout)


def postgres_query(dsn: str, query: str, *, timeout: float = 5.0) -> Any:
    return run_sync(_postgres_fetch(dsn, query, timeout))


async def _postgres_execute(dsn: str, statements: list[str], timeout: float) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=timeout)
    finally:
        await conn.close(timeout=timeout)


def postgres_execute(dsn: str, *statements: str, timeout: float = 30.0) -> None:
    run_sync(_postgres_execute(dsn, list(statements), timeout))


def probe_postgres(dsn: str) -> str:
    version = postgres_query(dsn, "SELECT version()", timeout=3.0)
    return str(version)


def probe_redis(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3.0, socket_connect_timeout=3.0)
    try:
        if not client.ping():
            raise DevStackError(f"redis at {redact(url)} did not answer PING")
        info = client.info("server")
        return str(info.get("redis_version", "?"))
    finally:
        client.close()


def clickhouse_query(
    url: str, query: str, *, database: str | None = None, timeout: float = 5.0
) -> str:
    """POST one statement over the HTTP interface with the credentials embedded in `url`.

    `database` None means "the database in the URL path"; pass "" to use none, which is needed
    before that database exists.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        raise DevStackError(f"not a ClickHouse URL: {redact(url)}")
    scheme = parts.scheme or "http"
    port = parts.port or (8443 if scheme == "https" else 8123)
    db = parts.path.strip("/") if database is None else database
    params = {"database": db} if db else {}
    endpoint = f"{scheme}://{parts.hostname}:{port}/?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(endpoint, data=query.encode(), method="POST")  # noqa: S310
    user = urllib.parse.unquote(parts.username or "default")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        raise DevStackError(f"clickhouse at {redact(url)}: HTTP {exc.code}: {detail}") from exc
    return body.decode("utf-8", "replace")


def probe_clickhouse(url: str) -> str:
    return clickhouse_query(url, "SELECT version()", database="", timeout=3.0).strip()


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and `status` output."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
