"""Bounded staging: delete rows that reached ClickHouse longer ago than the retention."""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

from datetime import datetime

import asyncpg

from herwa.etl.families import FAMILIES, Family

_CHUNK = 50_000


async def cleanup_family(pg: asyncpg.Connection, family: Family, older_than: datetime) -> int:
    """Delete ingested rows of one family; an un-ingested row (NULL) never matches ``<``.

    Found through the `<table>_ingested_brin` index or a sequential scan (postgres migration
    0005 dropped the per-row btree on ch_ingested_at to make the mark cheaper): cleanup runs once
    per run over a table bounded by the retention, so it takes the slower path.
    """
    deleted = 0
    while True:
        # Chunked so no single transaction holds millions of row locks or bloats WAL at once.
        status = await pg.execute(
            f"""
            DELETE FROM {family.staging_table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {family.staging_table}
                WHERE ch_ingested_at IS NOT NULL AND ch_ingested_at < $1
                LIMIT {_CHUNK}))
            """,
            older_than,
        )
        count = int(status.rsplit(" ", 1)[1])
        deleted += count
        if count < _CHUNK:
            return deleted


async def cleanup(pg: asyncpg.Connection, older_than: datetime) -> dict[str, int]:
    return {f.name: await cleanup_family(pg, f, older_than) for f in FAMILIES}
