"""Bounded staging: delete rows that reached ClickHouse longer ago than the retention."""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

from datetime import datetime

import asyncpg

from herwa.etl import low_water
from herwa.etl.families import FAMILIES, Family
from herwa.stores import rows_affected

_CHUNK = 50_000


async def cleanup_family(pg: asyncpg.Connection, family: Family, older_than: datetime) -> int:
    """Delete one family's rows loaded before ``older_than``: a range of staged_xid.

    Every row below the low-water mark that was current at the cutoff was loaded by then
    (etl/low_water.py), so the range is the whole test; the staged_xid index finds it. The batch
    records below that mark go with their rows.
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
                WHERE staged_xid < '{bound}'::xid8 LIMIT {_CHUNK}))
            """
        )
        count = rows_affected(status)
        deleted += count
        if count < _CHUNK:
            break
    await low_water.forget_before(pg, family, bound)
    return deleted


async def cleanup(pg: asyncpg.Connection, older_than: datetime) -> dict[str, int]:
    return {f.name: await cleanup_family(pg, f, older_than) for f in FAMILIES}
