"""ETL-maintained hourly rollups, recomputed per affected bucket so reloads never double count.

A materialized view adds whatever is inserted; if a batch is inserted twice (a crash between
the ClickHouse insert and the Postgres commit) the view counts it twice, and it cannot subtract
a message deleted later. Instead, every affected (guild, UTC hour) bucket is recomputed from
``messages FINAL`` minus ``message_deletions`` and written again whole, with a newer version;
keys that no longer have messages are written as zero rows so they replace the stale counts.
The per-author daily rollup (message_activity_author_days, with the bot flag in its key) is
recomputed for the whole UTC day of every affected bucket; the weekly one
(message_activity_weekly) from it, summed over the bot flag, for the whole UTC week (Monday to
Monday) of every such day; the per-author week arrays (message_activity_weeks_by_author) from
that for every author in those weeks; and from those the same authors' local weeks in their
guild's recorded zone (message_local_weeks, local_weeks.py), which retention reads. The daily
rollup's table (message_activity_daily) was read by nothing but the weekly recompute and cost a
write nearly the size of the messages, so it is no longer written (ClickHouse migration 0012
marks it stale; the next release drops it).

Affected buckets come from two places:

* Message batches: every message records the batch that loaded it (``loaded_batch``).
  :func:`flush_loaded` redoes the buckets of the messages loaded above the progress mark
  (``etl_rollup_progress``) and at or below the committed low-water mark of message_events,
  then moves the mark. It runs beside the sync loop as batches commit (runner.py).
* Message deletion batches (and batches loaded before loaded_batch existed) queue their
  buckets in Postgres (``etl_dirty_buckets``, in the same transaction as their record);
  :func:`flush_queue` recomputes them after the sync loop, so that no batch queues a bucket
  while it is being recomputed and dequeued.

A deletion request recomputes the buckets it empties itself (privacy.py).

Voice batches are followed the same way: every session records its batch too (ClickHouse 0014),
and :func:`flush_voice` rewrites the voice weeks (local_weeks.py) of the members of the sessions
above its own mark (``etl_rollup_progress`` 'voice'), after the sync loop.

A missing progress row (the table emptied by hand or by a tool, as ``herwa demo`` once did) is
read as 0, the mark migration 0007 starts from, and written back: recomputing a bucket again is
always correct, only slower, whereas skipping — what the code once did — left every later batch
out of the rollups without a word. Failing the run instead would have stopped loading as well
until someone re-inserted a row whose only correct value is the one the migration gives it. The
ETL logs a warning, so the cause is seen.

Either way the record of the work (the mark, the queue row) goes only after the recompute, so a
crash anywhere leaves it to the next run.
"""

# ruff: noqa: S608 - identifiers in SQL come from this package's static registries; values are bound.

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from clickhouse_connect.driver.external import ExternalData

from herwa.etl import local_weeks
from herwa.etl.families import BY_NAME, WIRE_FORMAT
from herwa.etl.low_water import ROLLUP_FAMILIES, low_water
from herwa.stores import PULL_SETTINGS

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

# A batch as ClickHouse sees it, column for column (see families.py).
_BATCH_STRUCTURE = {
    "deletions": (
        "message_id UInt64, guild_id UInt64, channel_id UInt64, "
        "deleted_at DateTime64(3, 'UTC'), version UInt64"
    ),
}

_AFFECTED = {
    "deletions": (
        "SELECT DISTINCT guild_id, toStartOfHour(created_at) FROM messages "
        "WHERE guild_id IN (SELECT guild_id FROM {batch}) "
        "AND (guild_id, message_id) IN (SELECT guild_id, message_id FROM {batch})"
    ),
}


def _version() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class PulledBatch:
    """A batch ClickHouse reads from Postgres itself: its SELECT (stores.PullSource.select,
    which holds the password)."""

    select: str = field(repr=False)


async def affected_buckets(
    ch: AsyncClient, kind: str, batch: bytes | PulledBatch
) -> list[tuple[int, int]]:
    """(guild_id, hour as epoch seconds) touched by a batch of ``kind`` (as loaded): its rows
    as pushed, or read from Postgres again."""
    if isinstance(batch, bytes):
        table = "batch"
        external = ExternalData(
            file_name=table, data=batch, fmt=WIRE_FORMAT, structure=_BATCH_STRUCTURE[kind]
        )
        settings: dict[str, object] = {}
    else:
        table, external, settings = f"({batch.select})", None, PULL_SETTINGS
    result = await ch.query(
        f"SELECT guild_id, toUnixTimestamp(h) FROM ({_AFFECTED[kind].format(batch=table)})"
        " AS a(guild_id, h)",
        settings=settings,
        external_data=external,
    )
    return [(int(g), int(h)) for g, h in result.result_rows]


_CHUNK = 20_000

# What a recompute may skip, safe because a message's created_at (and a rollup row's hour or
# day) never changes between its versions, so all versions of a key lie in the same partition
# and the same skip-index granule ranges. Without the first two every recompute read the whole
# months of its guilds with FINAL, whatever its buckets: a round of a few buckets cost as much
# as a round of all (benchmarks/README.md).
# Every rollup row written has a unique key (GROUP BY), so the insert-time merge changes no row.
# It still marks the part as merged (level 1), and FINAL reads the key ranges of a merged part
# that no other part overlaps without merging them; an insert-level part may hold a key twice,
# so FINAL merges all of it. The heatmap reads its small table across a year of monthly
# partitions, so that table is written merged (_MERGED_ON_INSERT). For the large tables the
# merge is pure insert cost. (Both measured: benchmarks/README.md.)
_RECOMPUTE_SETTINGS = {
    "do_not_merge_across_partitions_select_final": 1,
    "use_skip_indexes_if_final": 1,
    "optimize_on_insert": 0,
}
_MERGED_ON_INSERT = {**_RECOMPUTE_SETTINGS, "optimize_on_insert": 1}


async def mark_dirty(pg: asyncpg.Connection, buckets: list[tuple[int, int]]) -> None:
    await pg.executemany(
        "INSERT INTO etl_dirty_buckets (guild_id, hour) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(g, datetime.fromtimestamp(h, UTC)) for g, h in buckets],
    )


Hook = Callable[[], Awaitable[None]]

# The progress migration 0007 inserts: no message batch rolled up yet.
_NO_PROGRESS = 0


async def flush_loaded(pg: asyncpg.Connection, ch: AsyncClient, on_recomputed: Hook | None) -> int:
    """Recompute the buckets of every message batch committed since the last call."""
    ranges, owed, upto = await _owed_ranges(pg, "messages")
    if not ranges:
        return 0
    buckets: set[tuple[int, int]] = set()
    for above, below in ranges:
        # Without FINAL: every copy of a row loaded twice is seen, whichever FINAL would keep.
        result = await ch.query(
            "SELECT DISTINCT guild_id, toUnixTimestamp(toStartOfHour(created_at)) FROM messages"
            " WHERE loaded_batch > {above:UInt64} AND loaded_batch <= {below:UInt64}",
            parameters={"above": above, "below": below},
        )
        buckets.update((int(g), int(h)) for g, h in result.result_rows)
    await _recompute_then(ch, sorted(buckets), on_recomputed)
    await _record_progress(pg, "messages", upto, owed)
    return len(buckets)


async def flush_voice(pg: asyncpg.Connection, ch: AsyncClient) -> int:
    """Rewrite the voice weeks of every member of the voice batches committed since the last
    call (local_weeks.py); returns how many servers it touched."""
    ranges, owed, upto = await _owed_ranges(pg, "voice")
    if not ranges:
        return 0
    members = " UNION ALL ".join(
        "SELECT guild_id, user_id FROM voice_sessions"
        f" WHERE loaded_batch > {{above_{i}:UInt64}} AND loaded_batch <= {{below_{i}:UInt64}}"
        for i in range(len(ranges))
    )
    bounds: dict[str, object] = {}
    for i, (above, below) in enumerate(ranges):
        bounds |= {f"above_{i}": above, f"below_{i}": below}
    result = await ch.query(f"SELECT DISTINCT guild_id FROM ({members})", parameters=bounds)
    guilds = sorted(int(g) for (g,) in result.result_rows)
    if guilds:
        await local_weeks.rewrite_voice(ch, guilds, members, bounds)
    await _record_progress(pg, "voice", upto, owed)
    return len(guilds)


async def _owed_ranges(
    pg: asyncpg.Connection, rollup: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """The ranges of loaded_batch the rollup has still to cover: those owed since a
    reset-low-water (low_water.reset, usually none) and the one from its mark to the family's
    committed low-water mark. Also the owed ranges alone and that low-water mark."""
    done = await pg.fetchval(
        "SELECT loaded_batch::text::bigint FROM etl_rollup_progress WHERE rollup = $1", rollup
    )
    if done is None:
        log.warning(
            "etl_rollup_progress has no %r row: redoing the %s rollup for every batch loaded"
            " so far, as after its migration",
            rollup,
            rollup,
        )
        done = _NO_PROGRESS
    upto = await low_water(pg, BY_NAME[ROLLUP_FAMILIES[rollup]])
    owed = [
        (int(r["above"]), int(r["upto"]))
        for r in await pg.fetch(
            "SELECT above::text::bigint AS above, upto::text::bigint AS upto"
            " FROM etl_rollup_owed WHERE rollup = $1",
            rollup,
        )
    ]
    return [*owed, *([(done, upto)] if upto > done else [])], owed, upto


async def _record_progress(
    pg: asyncpg.Connection, rollup: str, upto: int, owed: list[tuple[int, int]]
) -> None:
    async with pg.transaction():
        # An upsert: the row may be the one that was missing.
        await pg.execute(
            "INSERT INTO etl_rollup_progress AS p (rollup, loaded_batch)"
            " VALUES ($1, $2::text::xid8) ON CONFLICT (rollup) DO UPDATE"
            " SET loaded_batch = EXCLUDED.loaded_batch, updated_at = now()"
            " WHERE p.loaded_batch < EXCLUDED.loaded_batch",
            rollup,
            str(upto),
        )
        await pg.execute(
            "DELETE FROM etl_rollup_owed WHERE rollup = $1 AND above = ANY($2::text[]::xid8[])",
            rollup,
            [str(above) for above, _ in owed],
        )


async def flush_queue(pg: asyncpg.Connection, ch: AsyncClient, on_recomputed: Hook | None) -> int:
    """Recompute every queued bucket, dequeuing each chunk only after its recompute."""
    done = 0
    while True:
        rows = await pg.fetch(
            "SELECT guild_id, extract(epoch FROM hour)::bigint AS h FROM etl_dirty_buckets"
            " ORDER BY guild_id, hour LIMIT $1",
            _CHUNK,
        )
        if not rows:
            return done
        buckets = [(int(r["guild_id"]), int(r["h"])) for r in rows]
        await _recompute_then(ch, buckets, on_recomputed)
        await pg.execute(
            "DELETE FROM etl_dirty_buckets WHERE (guild_id, hour) IN"
            " (SELECT g, to_timestamp(h) FROM unnest($1::bigint[], $2::bigint[]) AS b(g, h))",
            [g for g, _ in buckets],
            [h for _, h in buckets],
        )
        done += len(buckets)


async def _recompute_then(
    ch: AsyncClient, buckets: list[tuple[int, int]], on_recomputed: Hook | None
) -> None:
    # The hook is the test seam between a recompute and the record that it is done.
    await recompute(ch, buckets)
    if on_recomputed is not None:
        await on_recomputed()


async def recompute(ch: AsyncClient, buckets: list[tuple[int, int]]) -> None:
    """Rewrite the message rollups for these (guild_id, hour epoch seconds) buckets."""
    for start in range(0, len(buckets), _CHUNK):
        await _recompute_chunk(ch, buckets[start : start + _CHUNK])


def _live_messages(bucket: str, keys: str) -> str:
    """The messages not deleted, of the guilds and times [lo, hi) bound as parameters, whose
    (guild_id, epoch seconds of ``bucket``) is ``keys`` (an IN over the external table)."""
    # created_at is bounded in its own type, DateTime64(3): against a DateTime bound the
    # partition minmax index skipped a part whose rows lie in the bound's last second.
    return f"""
        SELECT guild_id, created_at, channel_id, author_id, is_bot
        FROM messages FINAL
        WHERE guild_id IN {{guilds:Array(UInt64)}}
          AND created_at >= toDateTime64({{lo:UInt32}}, 3, 'UTC')
          AND created_at < toDateTime64({{hi:UInt32}}, 3, 'UTC')
          AND (guild_id, toUInt32(toUnixTimestamp({bucket}))) {keys}
          AND (guild_id, message_id) NOT IN (
              SELECT guild_id, message_id FROM message_deletions
              WHERE guild_id IN {{guilds:Array(UInt64)}})
    """


async def _recompute_chunk(ch: AsyncClient, buckets: list[tuple[int, int]]) -> None:
    if not buckets:
        return
    guilds = sorted({g for g, _ in buckets})
    lo = min(h for _, h in buckets)
    hi = max(h for _, h in buckets) + 3600
    params = {"guilds": guilds, "lo": lo, "hi": hi, "version": _version()}
    # The bucket set travels as an external table: a literal list of thousands of tuples costs
    # more to parse than the recompute itself.
    csv = "".join(f"{g},{h}\n" for g, h in buckets).encode()

    def external() -> ExternalData:
        return ExternalData(
            file_name="buckets", data=csv, fmt="CSV", structure="guild_id UInt64, hour UInt32"
        )

    in_buckets = "IN (SELECT guild_id, hour FROM buckets)"
    live = _live_messages("toStartOfHour(created_at)", in_buckets)
    await ch.command(
        f"""
        INSERT INTO message_activity_hourly
            (guild_id, hour, channel_id, author_id, is_bot, messages, version)
        SELECT guild_id, hour, channel_id, author_id, max(bot), sum(n), {{version:UInt64}}
        FROM (
            SELECT guild_id, toStartOfHour(created_at) AS hour, channel_id, author_id,
                   is_bot AS bot, toUInt32(1) AS n
            FROM ({live})
            UNION ALL
            SELECT guild_id, hour, channel_id, author_id, is_bot, toUInt32(0)
            FROM message_activity_hourly FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND hour >= toDateTime({{lo:UInt32}}, 'UTC')
              AND hour < toDateTime({{hi:UInt32}}, 'UTC')
              AND (guild_id, toUInt32(toUnixTimestamp(hour))) {in_buckets}
        )
        GROUP BY guild_id, hour, channel_id, author_id
        """,
        parameters=params,
        settings=_RECOMPUTE_SETTINGS,
        external_data=external(),
    )
    await ch.command(
        f"""
        INSERT INTO message_activity_15m (guild_id, bucket, is_bot, messages, version)
        SELECT guild_id, bucket, bot, sum(n), {{version:UInt64}}
        FROM (
            SELECT guild_id, toStartOfFifteenMinutes(created_at) AS bucket, is_bot AS bot,
                   toUInt32(1) AS n
            FROM ({live})
            UNION ALL
            SELECT guild_id, bucket, is_bot, toUInt32(0)
            FROM message_activity_15m FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND bucket >= toDateTime({{lo:UInt32}}, 'UTC')
              AND bucket < toDateTime({{hi:UInt32}}, 'UTC')
              AND (guild_id, toUInt32(toUnixTimestamp(toStartOfHour(bucket)))) {in_buckets}
        )
        GROUP BY guild_id, bucket, bot
        """,
        parameters=params,
        settings=_MERGED_ON_INSERT,
        external_data=external(),
    )
    await _recompute_days(ch, sorted({(g, h - h % 86400) for g, h in buckets}))


async def _recompute_days(ch: AsyncClient, days: list[tuple[int, int]]) -> None:
    """Rewrite message_activity_author_days for these (guild_id, UTC day start epoch seconds),
    then the weeks they lie in."""
    guilds = sorted({g for g, _ in days})
    lo = min(d for _, d in days)
    hi = max(d for _, d in days) + 86400
    params = {"guilds": guilds, "lo": lo, "hi": hi, "version": _version()}
    csv = "".join(f"{g},{d}\n" for g, d in days).encode()
    in_days = "IN (SELECT guild_id, day FROM days)"

    def external() -> ExternalData:
        return ExternalData(
            file_name="days", data=csv, fmt="CSV", structure="guild_id UInt64, day UInt32"
        )

    # The messages are read once, here; the weeks are summed from this table, about a tenth of
    # the messages' size. Keys without a live message any more become zero rows, with the
    # identities of min and max as their times, so they never displace a live message's time.
    await ch.command(
        f"""
        INSERT INTO message_activity_author_days
            (guild_id, day, is_bot, author_id, messages, first_at, last_at, version)
        SELECT guild_id, day, is_bot, author_id, sum(n), min(first), max(last),
               {{version:UInt64}}
        FROM (
            SELECT guild_id, toDate(created_at) AS day, is_bot, author_id, toUInt32(1) AS n,
                   toDateTime(created_at, 'UTC') AS first, toDateTime(created_at, 'UTC') AS last
            FROM ({_live_messages("toStartOfDay(created_at)", in_days)})
            UNION ALL
            SELECT guild_id, day, is_bot, author_id, toUInt32(0),
                   toDateTime(4294967295, 'UTC'), toDateTime(0, 'UTC')
            FROM message_activity_author_days FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND day >= toDate(toDateTime({{lo:UInt32}}, 'UTC'))
              AND day < toDate(toDateTime({{hi:UInt32}}, 'UTC'))
              AND (guild_id, toUInt32(toUnixTimestamp(toDateTime(day, 'UTC')))) {in_days}
        )
        GROUP BY guild_id, day, is_bot, author_id
        """,
        parameters=params,
        settings=_RECOMPUTE_SETTINGS,
        external_data=external(),
    )
    await _recompute_weeks(ch, sorted({(g, d - (d // 86400 + 3) % 7 * 86400) for g, d in days}))


async def _recompute_weeks(ch: AsyncClient, weeks: list[tuple[int, int]]) -> None:
    """Rewrite message_activity_weekly for these (guild_id, UTC Monday epoch seconds) from the
    author days just rewritten, then the per-author week arrays of every author in them."""
    guilds = sorted({g for g, _ in weeks})
    lo = min(w for _, w in weeks)
    hi = max(w for _, w in weeks) + 7 * 86400
    params = {"guilds": guilds, "lo": lo, "hi": hi, "version": _version()}
    csv = "".join(f"{g},{w}\n" for g, w in weeks).encode()

    def external() -> ExternalData:
        return ExternalData(
            file_name="weeks", data=csv, fmt="CSV", structure="guild_id UInt64, week UInt32"
        )

    # Both bot flags of an author are summed here, as a week has no bot flag. Zero rows of the
    # author days are read too: their times are the identities of min and max, and an author
    # left with only those becomes a zero row here. No zero rows from this table are needed
    # besides: every author it holds for a week has author-day rows in that week (zero rows
    # once their messages are gone), as it is derived from them.
    week_rows = """
        SELECT guild_id, toMonday(day) AS week, author_id, messages, first_at, last_at
        FROM message_activity_author_days FINAL
        WHERE guild_id IN {guilds:Array(UInt64)}
          AND day >= toDate(toDateTime({lo:UInt32}, 'UTC'))
          AND day < toDate(toDateTime({hi:UInt32}, 'UTC'))
          AND (guild_id, toUInt32(toUnixTimestamp(toDateTime(toMonday(day), 'UTC'))))
              IN (SELECT guild_id, week FROM weeks)
    """
    await ch.command(
        f"""
        INSERT INTO message_activity_weekly
            (guild_id, week, author_id, messages, first_at, last_at, version)
        SELECT guild_id, week, author_id, sum(messages), min(first_at), max(last_at),
               {{version:UInt64}}
        FROM ({week_rows})
        GROUP BY guild_id, week, author_id
        """,
        parameters=params,
        settings=_RECOMPUTE_SETTINGS,
        external_data=external(),
    )
    await ch.command(
        f"""
        INSERT INTO message_activity_weeks_by_author
            (guild_id, author_id, weeks, first_at, last_at, version)
        SELECT guild_id, author_id, arrayMap(w -> w.1, s), arrayMap(w -> w.2, s),
               arrayMap(w -> w.3, s), {{version:UInt64}}
        FROM (
            SELECT guild_id, author_id,
                   arraySort(groupArrayIf((week, first_at, last_at), messages > 0)) AS s
            FROM message_activity_weekly FINAL
            WHERE guild_id IN {{guilds:Array(UInt64)}}
              AND (guild_id, author_id) IN (SELECT DISTINCT guild_id, author_id FROM ({week_rows}))
            GROUP BY guild_id, author_id
        )
        """,
        parameters=params,
        settings=_RECOMPUTE_SETTINGS,
        external_data=external(),
    )
    # The same authors' local weeks: those whose arrays this call just wrote, found by its
    # version (a version shared with another call only rewrites more authors, which is exact).
    await local_weeks.rewrite(
        ch,
        guilds,
        "SELECT guild_id, author_id FROM message_activity_weeks_by_author"
        " WHERE guild_id IN {guilds:Array(UInt64)} AND version = {version:UInt64}",
        params,
        settings=_RECOMPUTE_SETTINGS,
    )
