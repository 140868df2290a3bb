"""The staging registry (herwa.staging) and the SQL migrations describe the same tables."""

from __future__ import annotations

import asyncpg

from herwa import staging
from herwa.devstack import Endpoints
from herwa.etl.families import FAMILIES


async def _staging_columns(dsn: str) -> dict[str, set[str]]:
    # A staging table is one the ETL claims a server's rows from: it carries a staged_xid and a
    # guild_id (the ETL's own low-water marks carry only the first).
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " WHERE c.table_schema = 'public' AND c.table_name IN (SELECT table_name FROM"
            " information_schema.columns WHERE table_schema = 'public'"
            " AND column_name = 'staged_xid' INTERSECT SELECT table_name FROM"
            " information_schema.columns WHERE table_schema = 'public'"
            " AND column_name = 'guild_id')"
        )
    finally:
        await conn.close()
    tables: dict[str, set[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], set()).add(row["column_name"])
    return tables


async def test_the_registry_names_every_staging_table_and_column(migrated: Endpoints) -> None:
    in_sql = await _staging_columns(migrated.postgres_dsn)
    assert sorted(in_sql) == sorted(t.name for t in staging.STAGING_TABLES)
    for table in staging.STAGING_TABLES:
        named = {*table.columns, table.lag_column}
        if table.member_column:
            named.add(table.member_column)
        assert named <= in_sql[table.name], (table.name, named - in_sql[table.name])
        assert "guild_id" in table.columns, table.name


def test_every_staging_table_has_exactly_one_etl_family() -> None:
    moved = [family.staging for family in FAMILIES]
    assert sorted(t.name for t in moved) == sorted(t.name for t in staging.STAGING_TABLES)
    # and under the staging table's own name for the member, so opt-outs match on load too
    for family in FAMILIES:
        if family.user_column:
            assert family.user_column in dict(family.columns), family.name
