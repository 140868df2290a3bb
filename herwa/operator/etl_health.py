"""ETL health read from Postgres and exported by the operator, so it needs no Pushgateway.

The ETL is a CronJob: its pod is gone before Prometheus could scrape it. What an alert needs —
how old the oldest un-ingested staging row is, and when a run last succeeded — is in Postgres
anyway (the staging tables above their low-water marks, the ``etl_runs`` log, the last complete
history expiry pass in ``history_expiry``), so the operator,
which runs all the time and already holds a pool, reads it every ``interval`` seconds.

A failed read clears the gauges instead of leaving the last values standing: stale numbers
would look healthy, while missing ones make the chart's "no data" alert fire.
"""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg

from herwa.operator.metrics import ETL_HEALTH, EtlState
from herwa.staging import STAGING_TABLES, ingestion_lag

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 30.0


async def refresh(pool: asyncpg.Pool) -> bool:
    """Reads the ETL's state once and sets the gauges; False (gauges cleared) if it failed."""
    try:
        async with pool.acquire() as proxy:
            conn: asyncpg.Connection = proxy  # type: ignore[assignment]  # a proxy of one
            ages = {table.name: await ingestion_lag(conn, table) for table in STAGING_TABLES}
            last_success = await conn.fetchval(
                "SELECT coalesce(extract(epoch FROM max(finished_at)), 0)::float8 FROM etl_runs"
                " WHERE outcome IN ('caught_up', 'deadline')"
            )
            last = await conn.fetchrow(
                "SELECT outcome, rows_moved::text AS rows_moved, duration_seconds FROM etl_runs"
                " WHERE finished_at IS NOT NULL ORDER BY run_id DESC LIMIT 1"
            )
            expiry = await conn.fetchrow(
                "SELECT extract(epoch FROM completed_at)::float8 AS at,"
                " rows_expired::text AS rows FROM history_expiry"
            )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("could not read the ETL's state from Postgres: %s", exc)
        ETL_HEALTH.forget()
        return False
    # 0 until a run succeeds: "never" must be able to fire the not-succeeding alert.
    ETL_HEALTH.record(
        EtlState(
            backlog_age=ages,
            last_success=float(last_success),
            last_outcome=last["outcome"] if last else None,
            last_run_rows={k: int(v) for k, v in json.loads(last["rows_moved"]).items()}
            if last
            else {},
            last_run_seconds=last["duration_seconds"] if last else None,
            # 0 until a history expiry pass completes, like last_success.
            expiry_completed=expiry["at"] if expiry else 0.0,
            expiry_rows={k: int(v) for k, v in json.loads(expiry["rows"]).items()}
            if expiry
            else {},
        )
    )
    return True


async def watch(pool: asyncpg.Pool, interval: float = INTERVAL_SECONDS) -> None:
    """Refreshes the gauges until cancelled; an unexpected error is logged, not fatal: the
    operator's own work must not stop over its ETL readings."""
    while True:
        try:
            await refresh(pool)
        except Exception:
            log.exception("reading the ETL's state failed")
            ETL_HEALTH.forget()
        await asyncio.sleep(interval)
