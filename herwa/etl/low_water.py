"""Per-family low-water marks of ``staged_xid``: where claims start, and what cleanup may drop.

Invariant: every un-ingested staging row of a family has ``staged_xid`` >= the family's newest
mark in ``etl_low_water`` (postgres migration 0006), and every row below it is loaded. Each batch
records itself there in its own transaction (migration 0016): its range, row count and dedup
token, with its upper bound as the mark it leaves behind; batches of a family commit in claim
order, so marks only grow. Older records are kept as history, with the time they were
recorded: the batch that loaded a row is the first record above its staged_xid
(``etl_batch_of``), and rows below the mark that was current at a time T were all loaded by T,
which is how cleanup finds old rows by range.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from herwa.etl.families import FAMILIES, Family
from herwa.stores import rows_affected

# The rollups that follow a family's loaded batches by a mark in etl_rollup_progress, and the
# family each follows (rollups.py).
ROLLUP_FAMILIES: Mapping[str, str] = {"messages": "message_events", "voice": "voice_sessions"}


@dataclass
class Cursor:
    """Where a family's next claim starts.

    Every un-ingested row has ``staged_xid >= next_xid`` once the batches claimed before it
    have committed; ``caught_up`` is set when a claim reached the snapshot bound.
    """

    family: Family
    next_xid: int
    caught_up: bool = False


# No real transaction has id 0 or 1; rows ingested before migration 0006 carry 0.
_FIRST_XID = 1


async def load_cursors(pg: asyncpg.Connection) -> dict[str, Cursor]:
    rows = await pg.fetch(
        "SELECT family, max(staged_xid::text::bigint) AS mark FROM etl_low_water GROUP BY family"
    )
    marks: dict[str, int] = {r["family"]: int(r["mark"]) for r in rows}
    return {f.name: Cursor(f, marks.get(f.name, _FIRST_XID)) for f in FAMILIES}


async def low_water(pg: asyncpg.Connection, family: Family) -> int:
    """The family's recorded low-water mark: no un-ingested row has a smaller staged_xid."""
    mark = await mark_at(pg, family)
    return _FIRST_XID if mark is None else mark


async def record_batch(
    pg: asyncpg.Connection,
    family: Family,
    bounds: tuple[int, int],
    rows: int,
    dedup_token: str | None,
) -> None:
    """In a batch's transaction: rows in [bounds) are loaded, and so is every row below.

    An empty batch that ends where the last one did leaves no second record.
    """
    lower, upper = bounds
    await pg.execute(
        "INSERT INTO etl_low_water (family, staged_xid, from_xid, row_count, dedup_token)"
        f" VALUES ($1, '{int(upper)}'::xid8, '{int(lower)}'::xid8, $2, $3)"
        " ON CONFLICT DO NOTHING",
        family.name,
        rows,
        dedup_token,
    )


async def mark_at(
    pg: asyncpg.Connection, family: Family, when: datetime | None = None
) -> int | None:
    """The newest mark recorded at or before ``when`` (ever, if None); None if there is none."""
    mark = await pg.fetchval(
        "SELECT max(staged_xid::text::bigint) FROM etl_low_water"
        " WHERE family = $1 AND ($2::timestamptz IS NULL OR recorded_at <= $2)",
        family.name,
        when,
    )
    return None if mark is None else int(mark)


async def forget_before(pg: asyncpg.Connection, family: Family, xid: int) -> None:
    """Drop history older than ``xid`` (a mark cleanup has used); the newest mark always stays."""
    await pg.execute(
        f"DELETE FROM etl_low_water WHERE family = $1 AND staged_xid < '{int(xid)}'::xid8",
        family.name,
    )


class MarksAhead(RuntimeError):
    """The marks come from another cluster's transaction ids (a restore or a logical copy)."""


async def check_counter(pg: asyncpg.Connection) -> None:
    """Refuse to run when a mark lies beyond the server's next transaction id.

    A dump/restore or a logical-replication move brings the marks and staged_xids along but not
    the transaction-id counter (pg_upgrade and physical failover do keep it): every new row
    would be staged below the marks and never loaded, while each run reported "caught up".
    """
    row = await pg.fetchrow(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next, greatest("
        " (SELECT max(staged_xid::text::bigint) FROM etl_low_water),"
        " (SELECT max(loaded_batch::text::bigint) FROM etl_rollup_progress)) AS mark"
    )
    if row is not None and row["mark"] is not None and row["mark"] > row["next"]:
        raise MarksAhead(
            f"the ETL's low-water marks (up to {row['mark']}) are ahead of this Postgres "
            f"server's transaction ids (next {row['next']}): the database was restored or "
            "copied into another cluster. Run `herwa etl reset-low-water` once; see "
            "charts/herwa/RUNBOOKS.md (HerwaEtlRunFailed)"
        )


async def reset(pg: asyncpg.Connection) -> dict[str, int]:
    """Re-base every family on this server's transaction ids; returns rows re-staged per family.

    Rows whose staged_xid lies at or beyond the current id get a valid one: pending rows (at or
    above their family's mark) the current id (claimable once this commits), loaded rows 0.
    Setting staged_xid keeps the restage triggers (migration 0016) out. Then the marks start
    again at 1 (dated now),
    and the rollups' progress at 0: the next recompute covers every batch loaded from then, and
    the range it still owed on the old ids (etl_rollup_owed).
    """
    restaged: dict[str, int] = {}
    async with pg.transaction():
        for family in FAMILIES:
            status = await pg.execute(
                f"""
                UPDATE {family.staging_table} SET staged_xid =
                    CASE WHEN staged_xid >= $1::text::xid8 THEN pg_current_xact_id() ELSE '0' END
                WHERE staged_xid >= pg_current_xact_id()
                """,
                str(await low_water(pg, family)),
            )
            restaged[family.name] = rows_affected(status)
        # Rows loaded by batches a rollup had not reached yet carry old-cluster bounds that
        # the new marks will not pass for a long time: their range is owed separately.
        await pg.execute(
            """
            INSERT INTO etl_rollup_owed (rollup, above, upto)
            SELECT p.rollup, p.loaded_batch, m.mark
            FROM etl_rollup_progress p
            JOIN unnest($1::text[], $2::text[]) AS r(rollup, family) USING (rollup)
            JOIN (SELECT family, max(staged_xid) AS mark FROM etl_low_water GROUP BY family) m
                USING (family)
            WHERE p.loaded_batch < m.mark
            ON CONFLICT DO NOTHING
            """,
            list(ROLLUP_FAMILIES),
            list(ROLLUP_FAMILIES.values()),
        )
        # Opt-outs committed on the old cluster are old: below any snapshot from now on.
        await pg.execute(
            "UPDATE opt_outs SET opted_out_xid = '0' WHERE opted_out_xid >= pg_current_xact_id()"
        )
        await pg.execute("DELETE FROM etl_low_water")
        # Dated now: the rows given 0 above were loaded by now, and cleanup keeps them for a
        # retention from here (it goes by the marks' dates alone).
        await pg.executemany(
            "INSERT INTO etl_low_water (family, staged_xid) VALUES ($1, '1')",
            [(family.name,) for family in FAMILIES],
        )
        await pg.execute("UPDATE etl_rollup_progress SET loaded_batch = '0', updated_at = now()")
    return restaged
