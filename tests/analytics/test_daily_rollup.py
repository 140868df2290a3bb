"""Retention from the per-author day and week rollups is exact at a +05:30 week boundary.

Monday 00:00 in Asia/Kolkata is Sunday 18:30 UTC: 18:10 and 18:45 UTC on Sunday 2024-03-10 lie
in one UTC hour and one UTC day but in two Kolkata weeks. An hourly bucket cannot tell them
apart; the daily rollup's first/last message times can. A deletion loaded by a later run
rewrites the day (and an author left without live messages becomes a zero row).
"""

from __future__ import annotations

from datetime import date

from herwa import analytics
from herwa.analytics import Cohort
from herwa.devstack import Endpoints
from herwa.stores import clickhouse_url_client
from tests.analytics._rollup_data import Z, load_then_delete

G = 3


# (message_id, author, at)
MESSAGES = [
    (1, 200, "2024-03-10 18:10"),  # Sun 23:40 in Kolkata
    (2, 200, "2024-03-10 18:45"),  # Mon 00:15 in Kolkata: the next local week
    (3, 201, "2024-03-10 18:45"),
    (4, 202, "2024-03-10 18:10"),
    (5, 203, "2024-03-10 18:10"),
    (6, 203, "2024-03-10 18:45"),  # deleted by the second run
    (7, 204, "2024-03-10 18:45"),  # deleted by the second run: 204 is never active
]
SPAN = (Z("2024-03-01 00:00"), Z("2024-03-25 00:00"))


async def test_retention_rollup_is_exact_across_a_half_hour_week_boundary(
    migrated: Endpoints,
) -> None:
    await load_then_delete(
        migrated,
        G,
        members=range(200, 205),
        joined=Z("2024-03-04 10:00"),
        messages=MESSAGES,
        deleted=(6, 7),
        deleted_at=Z("2024-03-11 00:00"),
    )

    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:
        for source in ("rollup", "raw"):
            kolkata = await analytics.retention(
                client,
                G,
                "Asia/Kolkata",
                *SPAN,
                weeks=3,
                source=source,
            )
            assert kolkata == [Cohort(date(2024, 3, 4), 5, (3, 2, 0), (0, 0, 0))], source
            utc = await analytics.retention(
                client,
                G,
                "UTC",
                *SPAN,
                weeks=3,
                source=source,
            )
            assert utc == [Cohort(date(2024, 3, 4), 5, (4, 0, 0), (0, 0, 0))], source
        # The deleted-only author's day was rewritten as a zero row, not left stale.
        result = await client.query(
            "SELECT author_id, sum(messages) FROM message_activity_author_days FINAL"
            " WHERE guild_id = {g:UInt64} GROUP BY author_id ORDER BY author_id",
            parameters={"g": G},
        )
        assert [tuple(r) for r in result.result_rows] == [
            (200, 2),
            (201, 1),
            (202, 1),
            (203, 1),
            (204, 0),
        ]
    finally:
        await client.close()
