"""Retention's per-member week rollups, maintained by the real ETL, exact at the widest offsets.

Monday 00:00 in Pacific/Kiritimati (+14:00) is Sunday 10:00 UTC, in Etc/GMT+12 (-12:00) it is
Monday 12:00 UTC: the edges of the window in which a local week can start (migration 0005).
Author 300 writes on Sunday 2024-03-10 at 09:00 and 11:00 UTC (one UTC week, two Kiritimati
weeks); author 301 on Monday 2024-03-11 at 11:00 UTC (the UTC week after, the week before in
-12:00). A deletion loaded by a later run empties author 302's only week, which must vanish
from the per-author arrays, not linger.
"""

from __future__ import annotations

from datetime import date, datetime

from herwa import analytics
from herwa.analytics import Cohort
from herwa.devstack import Endpoints
from herwa.stores import clickhouse_url_client
from tests.analytics._rollup_data import Z, load_then_delete

G = 5


# (message_id, author, at)
MESSAGES = [
    (1, 300, "2024-03-10 09:00"),
    (2, 300, "2024-03-10 11:00"),
    (3, 301, "2024-03-11 11:00"),
    (4, 302, "2024-03-12 12:00"),  # deleted by the second run
]
SPAN = (Z("2024-02-20 00:00"), Z("2024-03-20 00:00"))


async def test_week_rollups_are_exact_at_the_widest_offsets_and_follow_deletions(
    migrated: Endpoints,
) -> None:
    await load_then_delete(
        migrated,
        G,
        members=(300, 301, 302),
        joined=Z("2024-03-06 12:00"),
        messages=MESSAGES,
        deleted=(4,),
        deleted_at=Z("2024-03-13 00:00"),
    )

    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    try:
        result = await client.query(
            "SELECT author_id, weeks, first_at, last_at FROM message_activity_weeks_by_author"
            " FINAL WHERE guild_id = {g:UInt64} ORDER BY author_id",
            parameters={"g": G},
        )
        # Array elements come back naive (UTC); the empty arrays are 302's zero row.
        naive = datetime.fromisoformat
        assert [tuple(r) for r in result.result_rows] == [
            (300, [date(2024, 3, 4)], [naive("2024-03-10 09:00")], [naive("2024-03-10 11:00")]),
            (301, [date(2024, 3, 11)], [naive("2024-03-11 11:00")], [naive("2024-03-11 11:00")]),
            (302, [], [], []),
        ]
        for tz, expected in (
            # Joined Wednesday 2024-03-06: 300 is active in that week and, from 10:00 UTC on
            # Sunday, in the next one; 301's Monday 11:00 UTC is the week after in Kiritimati.
            ("Pacific/Kiritimati", [Cohort(date(2024, 3, 4), 3, (1, 2, 0), (0, 0, 0))]),
            # In -12:00, 301's Monday 11:00 UTC is still Sunday: the join week.
            ("Etc/GMT+12", [Cohort(date(2024, 3, 4), 3, (2, 0, 0), (0, 0, 0))]),
            ("UTC", [Cohort(date(2024, 3, 4), 3, (1, 1, 0), (0, 0, 0))]),
        ):
            for source in ("rollup", "raw"):
                cohorts = await analytics.retention(client, G, tz, *SPAN, weeks=3, source=source)
                assert cohorts == expected, (tz, source)
    finally:
        await client.close()
