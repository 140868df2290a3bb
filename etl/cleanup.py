"""Bounded staging: delete rows that reached ClickHouse longer ago than the retention."""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from herwa.etl import low_water
from herwa.etl.families import FAMILIES, Family
from herwa.stores import rows_affected

log = logging.getLogger(__name__)

_CHUNK = 50_000


async def cleanup_family(pg: asyncpg.Connection, family: Family, older_than: datetime) -> int:
    """Delete ingested rows of one family; an un-ingested row (NULL) never matches ``<``.

    Candidates come from the staged_xid index: rows below the low-water mark that was current
    at the cutoff were all ingested by then (etl/low_water.py). The ch_ingested_at test decides.
    """
    bound = await low_water.mark_at(pg, family, older_than)
    if bound is None:
        return 0
    deleted = 0
    while True:
        # Chunked so no single transaction holds millions of row locks or bloats WAL at once.
        status = await pg.execute(
            f"""
            DELETE FROM {family.staging_table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {family.staging_table}
                WHERE staged_xid < '{bound}'::xid8
                  AND ch_ingested_at IS NOT NULL AND ch_ingested_at < $1
                LIMIT {_CHUNK}))
            """,
            older_than,
        )
        count = rows_affected(status)
        deleted += count
        if count < _CHUNK:
            break
    await _restage_stranded(pg, family, bound)
    await low_water.forget_before(pg, family, bound)
    return deleted


async def _restage_stranded(pg: asyncpg.Connection, family: Family, bound: int) -> None:
    """Give any un-ingested row left below the bound a current staged_xid, so it is loaded.

    None should exist (the low-water invariant); one would come from a hand-written UPDATE
    that set ch_ingested_at back to NULL without a new staged_xid. Once the deletes above have
    run, little is left below the bound, so looking costs next to nothing.
    """
    status = await pg.execute(
        f"""
        UPDATE {family.staging_table} SET staged_xid = pg_current_xact_id()
        WHERE staged_xid < '{bound}'::xid8 AND ch_ingested_at IS NULL
        """
    )
    restaged = rows_affected(status)
    if restaged:
        log.warning(
            "un-ingested rows below the low-water mark were re-staged for the next run",
            extra={"table": family.staging_table, "rows": restaged},
        )


async def cleanup(pg: asyncpg.Connection, older_than: datetime) -> dict[str, int]:
    return {f.name: await cleanup_family(pg, f, older_than) for f in FAMILIES}
