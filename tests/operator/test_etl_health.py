"""The operator exports the ETL's health from Postgres: no Pushgateway, no scrape of a CronJob."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from herwa.devstack import Endpoints
from herwa.etl.families import FAMILIES
from herwa.etl.runner import RunOptions, run_once
from herwa.operator import etl_health
from herwa.telemetry import TelemetryServer
from tests.etl import stage_messages

ETL_METRICS = (
    "herwa_operator_etl_backlog_age_seconds",
    "herwa_operator_etl_last_success_timestamp_seconds",
    "herwa_operator_etl_last_run_outcome",
    "herwa_operator_etl_last_run_rows",
    "herwa_operator_etl_last_run_duration_seconds",
)


async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics as served, reduced to the ETL health samples."""
    async with (
        TelemetryServer("127.0.0.1", 0, registry=REGISTRY) as server,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}/metrics") as response,
    ):
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ETL_METRICS
    }


@pytest.fixture
async def pool(migrated: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated.postgres_dsn, min_size=0, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def test_backlog_age_and_last_success_follow_the_etl(
    migrated: Endpoints, pool: asyncpg.Pool
) -> None:
    assert await etl_health.refresh(pool)
    before = await scrape()
    # No run yet: "never succeeded" is 0, so the not-succeeding alert can fire.
    assert before[("herwa_operator_etl_last_success_timestamp_seconds", ())] == 0
    for family in FAMILIES:
        assert before[("herwa_operator_etl_backlog_age_seconds", (("table", family.name),))] == 0
    assert all(
        v == 0 for (name, _), v in before.items() if name == "herwa_operator_etl_last_run_outcome"
    )

    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await stage_messages(conn, range(20))
        await conn.execute("UPDATE message_events SET captured_at = now() - interval '1 hour'")
    finally:
        await conn.close()
    assert await etl_health.refresh(pool)
    waiting = await scrape()
    age = waiting[("herwa_operator_etl_backlog_age_seconds", (("table", "message_events"),))]
    assert 3600 <= age < 3600 + 120

    started = time.time()
    result = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, RunOptions(batch_rows=1000)
    )
    assert result.outcome == "caught_up"
    assert await etl_health.refresh(pool)
    after = await scrape()
    assert after[("herwa_operator_etl_backlog_age_seconds", (("table", "message_events"),))] == 0
    success = after[("herwa_operator_etl_last_success_timestamp_seconds", ())]
    assert started - 5 <= success <= time.time() + 5
    outcome = "herwa_operator_etl_last_run_outcome"
    assert after[(outcome, (("outcome", "caught_up"),))] == 1
    assert after[(outcome, (("outcome", "failed"),))] == 0
    # What the run loaded and how long it took, for the dashboard's ETL panels.
    assert after[("herwa_operator_etl_last_run_rows", (("table", "message_events"),))] == 20
    assert after[("herwa_operator_etl_last_run_duration_seconds", ())] == pytest.approx(
        result.seconds, abs=0.5
    )


async def test_an_unreadable_state_exports_nothing(migrated: Endpoints, pool: asyncpg.Pool) -> None:
    assert await etl_health.refresh(pool)
    assert await scrape()
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE etl_runs RENAME TO etl_runs_gone")
    assert not await etl_health.refresh(pool)
    assert await scrape() == {}
