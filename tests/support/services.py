"""Real Postgres, Redis and ClickHouse for the tests (a pytest plugin).

- `services` (session): one embedded DevStack for the whole run, or the external servers named
  by HERWA_TEST_POSTGRES_DSN / HERWA_TEST_REDIS_URL / HERWA_TEST_CLICKHOUSE_URL (+ _READONLY_URL).
- `devstack_dir` (function): an empty directory for a test's own DevStack, removed afterwards.
- `endpoints` (function): the same servers, but a brand-new Postgres database (owned by the
  DSN's role), a brand-new ClickHouse database (both ClickHouse users can use it) and Redis
  logical db 1 flushed before the test. Both databases are dropped afterwards. Redis db 1 is
  shared by all tests in a run, which is safe because tests run one at a time (no xdist).

A missing package or binary makes these fixtures error, never skip: a green run must mean the
tests ran against real servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from herwa.devstack import DevStack, Endpoints, clickhouse_query, postgres_execute

_ENV = {
    "postgres_dsn": "HERWA_TEST_POSTGRES_DSN",
    "redis_url": "HERWA_TEST_REDIS_URL",
    "clickhouse_url": "HERWA_TEST_CLICKHOUSE_URL",
    "clickhouse_readonly_url": "HERWA_TEST_CLICKHOUSE_READONLY_URL",
}
# The per-test Redis db; db 0 is what `services` hands out for session-wide use.
TEST_REDIS_DB = 1


@contextlib.contextmanager
def _private_dir(prefix: str) -> Iterator[Path]:
    """A data dir outside pytest's tmp tree.

    As root, Postgres runs as an unprivileged account that must traverse every parent of its
    data dir, and every pytest session start (any pytest on the machine) resets
    /tmp/pytest-of-root to 0700, which breaks a Postgres (re)start under tmp_path.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def services() -> Iterator[Endpoints]:
    external = {field: os.environ.get(var) or None for field, var in _ENV.items()}
    with _private_dir("herwa-test-services-") as data_dir:
        stack = DevStack(data_dir, **external)
        endpoints = stack.up()
        try:
            yield endpoints
        finally:
            stack.down()


@pytest.fixture
def devstack_dir() -> Iterator[Path]:
    """An empty directory for tests that run a DevStack of their own (see _private_dir)."""
    with _private_dir("herwa-test-devstack-") as path:
        yield path


@contextlib.contextmanager
def fresh_databases(services: Endpoints) -> Iterator[Endpoints]:
    """The same servers with a brand-new Postgres and ClickHouse database and Redis db 1
    flushed; both databases are dropped afterwards."""
    name = f"herwa_test_{uuid.uuid4().hex[:12]}"
    pg_admin = services.postgres_dsn
    pg_owner = urllib.parse.unquote(urllib.parse.urlsplit(pg_admin).username or "herwa")
    postgres_execute(pg_admin, f'CREATE DATABASE "{name}" OWNER "{pg_owner}"')
    clickhouse_query(services.clickhouse_url, f"CREATE DATABASE {name}", database="")
    _flush_redis(services.redis_url, TEST_REDIS_DB)
    try:
        yield replace(
            services,
            postgres_dsn=with_path(services.postgres_dsn, name),
            redis_url=with_path(services.redis_url, str(TEST_REDIS_DB)),
            clickhouse_url=with_path(services.clickhouse_url, name),
            clickhouse_readonly_url=with_path(services.clickhouse_readonly_url, name),
        )
    finally:
        # FORCE: a test that leaked a connection must not make every later test fail.
        postgres_execute(pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clickhouse_query(
            services.clickhouse_url, f"DROP DATABASE IF EXISTS {name} SYNC", database=""
        )


@pytest.fixture
def endpoints(services: Endpoints) -> Iterator[Endpoints]:
    with fresh_databases(services) as fresh:
        yield fresh


def with_path(url: str, path: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{path}"))


def _flush_redis(url: str, db: int) -> None:
    import redis

    client = redis.Redis.from_url(with_path(url, str(db)), socket_timeout=5.0)
    try:
        client.flushdb()
    finally:
        client.close()
