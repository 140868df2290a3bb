"""Fixtures for the operator tests: a OperatorRuntime over real, migrated Postgres and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import kopf
import pytest
from redis.asyncio import Redis

from herwa import platform
from herwa.devstack import Endpoints
from herwa.operator.handlers import by_guild
from herwa.operator.model import Claim
from herwa.operator.reconcile import OperatorRuntime

PREFIX = "herwa:"


@pytest.fixture
async def runtime(migrated: Endpoints) -> AsyncIterator[OperatorRuntime]:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=0, max_size=4)
    redis = Redis.from_url(migrated.redis_url)
    rt = OperatorRuntime(pool=pool, redis=redis, prefix=PREFIX, platform=platform.load())
    try:
        yield rt
    finally:
        await redis.aclose()
        await pool.close()


class FakeCR:
    """A GuildSubscription as kopf hands it to handlers, plus the in-memory index entry."""

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        namespace: str = "tenant-a",
        created: str = "2025-01-01T00:00:00Z",
    ) -> None:
        self.meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": created,
        }
        self.spec = dict(spec)
        self.status: dict[str, Any] = {}

    @property
    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "herwa.dev/v1alpha1",
            "kind": "GuildSubscription",
            "metadata": self.meta,
            "spec": self.spec,
            "status": self.status,
        }

    def edit(self, **spec: Any) -> None:
        self.spec.update(spec)
        self.meta["generation"] += 1

    def kwargs(self, memo: Any, index: dict[str, list[Claim]]) -> dict[str, Any]:
        return {
            "body": self.body,
            "meta": self.meta,
            "spec": self.spec,
            "status": self.status,
            "patch": kopf.Patch(),
            "memo": memo,
            "by_guild": index,
            "retry": 0,
            "logger": None,
        }

    def apply_status(self, patch: kopf.Patch) -> None:
        self.status.update(patch.get("status", {}))

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)


def index_of(*crs: FakeCR) -> dict[str, list[Claim]]:
    index: dict[str, list[Claim]] = {}
    for cr in crs:
        for key, claim in by_guild(spec=cr.spec, meta=cr.meta).items():
            index.setdefault(key, []).append(claim)
    return index


@pytest.fixture
def memo(runtime: OperatorRuntime) -> kopf.Memo:
    return kopf.Memo(runtime=runtime)
