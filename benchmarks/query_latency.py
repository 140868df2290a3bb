"""Heatmap and retention latency for one guild with >= 10 M message events: rollups vs raw.

Usage: ``python benchmarks/query_latency.py [--messages 10000000]``; uses the HERWA_* servers
where set, embedded ones otherwise. Builds a throw-away database: messages are
generated inside ClickHouse (a year of traffic, skewed authors and channels), member joins and
voice sessions beside them, and the rollups are built by the ETL's own recompute. Each query
runs through herwa.analytics as the read-only user; the median of several runs is printed.

Retention is timed in each zone listed as the guild's own: its zone is set the way production
sets it (a Postgres ``guilds`` row, then the function each ETL run calls to rebuild the local
weeks in it), so "now" reads the precomputed local weeks (migration 0013); "any zone" is the
statement that answers in every other zone (and in the Grafana panel), timed beside it.
Retention is also timed with its statement before migration 0010 ("0009", run interleaved with
the current ones, with the embedded ClickHouse's CPU per statement beside each), as migration
0005 shipped it, and the way it was answered before the per-member week arrays (migration
0005): three statements over the per-(author, day) rollup, the cohort on the hash side of the
joins. All are checked to agree and printed side by side, with the targets, and a last line
``target met: yes|no``. ``--quick`` leaves out the slow comparisons (daily, raw).
"""

# ruff: noqa: S608 - benchmark SQL is composed from its own constants and integers.

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, Literal

from _stores import ServerCpu, bench_servers

from herwa import analytics
from herwa.analytics.retention import recorded_zone
from herwa.devstack import Endpoints
from herwa.etl import local_weeks, rollups
from herwa.stores import clickhouse_url_client

GUILD = 4242
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 1, tzinfo=UTC)
TARGET_MS = {"heatmap": 20.0, "retention": 50.0}

# Retention as herwa.analytics answered it before migration 0005, for the side-by-side figure.
# It read the daily rollup, which ClickHouse 0012 dropped; the author days hold the same rows
# split by the bot flag, and give the same weeks (a row's first_at and last_at lie within those
# of the author's day), from slightly more rows than the figures measured before 0012.
_DAILY_COHORT = """
    SELECT user_id, toStartOfWeek(toTimeZone(min(at), {tz:String}), 1) AS week
    FROM member_events FINAL
    WHERE guild_id = {guild_id:UInt64} AND event = 'join' AND (NOT is_bot OR {bots:Bool})
    GROUP BY user_id
    HAVING min(at) >= toDateTime({since:UInt32}, 'UTC')
       AND min(at) < toDateTime({until:UInt32}, 'UTC')
"""
_DAILY_ACTIVITY = (
    """
    SELECT DISTINCT author_id AS user_id, toStartOfWeek(toTimeZone(at, {tz:String}), 1) AS week
    FROM message_activity_author_days FINAL ARRAY JOIN [first_at, last_at] AS at
    WHERE guild_id = {guild_id:UInt64} AND messages > 0
    """,
    """
    SELECT DISTINCT user_id, toStartOfWeek(toTimeZone(joined_at, {tz:String}), 1) AS week
    FROM voice_sessions FINAL WHERE guild_id = {guild_id:UInt64}
    """,
)

# Retention's statement as migration 0005 shipped it (a 0/1 vector per member and week from a
# lambda inside a lambda, voice sessions as raw times), for the side-by-side figure.
_RETENTION_0005 = (
    "SELECT cohort, joined, toUInt16(n) AS n, active[n + 1] AS active, voice[n + 1] AS "
    "voice_active FROM ( SELECT cohort, count() AS joined, sumForEach(message_weeks) AS "
    "active, sumForEach(voice_weeks) AS voice FROM ( SELECT m.week AS cohort, arrayMap( k -> "
    "toUInt32(has(arrayMap(t -> toStartOfWeek(toTimeZone(t, {tz:String}), 1), "
    "arrayConcat(arrayFilter((t, w) -> w >= m.week - 7 AND w < m.week + 7 * ({weeks:UInt16} + "
    "1), a.first_at, a.weeks), arrayFilter((t, w) -> w >= m.week - 7 AND w < m.week + 7 * "
    "({weeks:UInt16} + 1), a.last_at, a.weeks)) ), m.week + 7 * k)), range({weeks:UInt16})) "
    "AS message_weeks, arrayMap( k -> toUInt32(has(arrayMap(t -> toStartOfWeek(toTimeZone(t, "
    "{tz:String}), 1), arrayFilter(t -> t >= toDateTime(m.week - 1, 'UTC') AND t < "
    "toDateTime(m.week + 7 * {weeks:UInt16} + 1, 'UTC'), v.times)), m.week + 7 * k)), "
    "range({weeks:UInt16})) AS voice_weeks FROM ( SELECT user_id, "
    "toStartOfWeek(toTimeZone(min(at), {tz:String}), 1) AS week FROM member_events WHERE "
    "guild_id = {guild_id:UInt64} AND event = 'join' AND (NOT is_bot OR {bots:Bool}) GROUP BY "
    "user_id HAVING min(at) >= toDateTime({since:UInt32}, 'UTC') AND min(at) < "
    "toDateTime({until:UInt32}, 'UTC') ) AS m LEFT JOIN ( SELECT author_id AS user_id, weeks, "
    "first_at, last_at FROM message_activity_weeks_by_author FINAL WHERE guild_id = "
    "{guild_id:UInt64} ) AS a ON a.user_id = m.user_id LEFT JOIN ( SELECT user_id, "
    "groupArray(joined_at) AS times FROM voice_sessions WHERE guild_id = {guild_id:UInt64} "
    "GROUP BY user_id ) AS v ON v.user_id = m.user_id ) GROUP BY cohort ) ARRAY JOIN "
    "range({weeks:UInt16}) AS n ORDER BY cohort, n"
)


# Retention's statement before migration 0010 (cohort from member_events, voice sessions grouped
# per member from voice_sessions, per-author week arrays filtered by a lambda), for the
# side-by-side figure.
_RETENTION_0009 = (
    "SELECT cohort, joined, n, if(cohort + 7 * n <= toDate(now(), {tz:String}), "
    "active.2[indexOf(active.1, n)], NULL) AS active, if(cohort + 7 * n <= toDate(now(), "
    "{tz:String}), voice.2[indexOf(voice.1, n)], NULL) AS voice_active FROM ( SELECT "
    "cohort, count() AS joined, sumMap(message_weeks, "
    "arrayWithConstant(length(message_weeks), toUInt64(1))) AS active, sumMap(voice_weeks, "
    "arrayWithConstant(length(voice_weeks), toUInt64(1))) AS voice FROM ( SELECT m.week AS "
    "cohort, arrayFilter(n -> n < {weeks:UInt16}, arrayMap(w -> toUInt16(intDiv(w - m.week,"
    " 7)), arrayFilter(w -> w >= m.week, arrayDistinct(arrayMap(t -> "
    "toStartOfWeek(toTimeZone(t, {tz:String}), 1), arrayConcat(arrayFilter((t, w) -> w >= "
    "m.week - 7 AND w < m.week + 7 * ({weeks:UInt16} + 1), a.first_at, a.weeks), "
    "arrayFilter((t, w) -> w >= m.week - 7 AND w < m.week + 7 * ({weeks:UInt16} + 1), "
    "a.last_at, a.weeks)) ))))) AS message_weeks, arrayFilter(n -> n < {weeks:UInt16}, "
    "arrayMap(w -> toUInt16(intDiv(w - m.week, 7)), arrayFilter(w -> w >= m.week, "
    "v.weeks))) AS voice_weeks FROM ( SELECT user_id, toStartOfWeek(toTimeZone(min(at), "
    "{tz:String}), 1) AS week FROM member_events WHERE guild_id = {guild_id:UInt64} AND "
    "event = 'join' AND (NOT is_bot OR {bots:Bool}) GROUP BY user_id HAVING min(at) >= "
    "toDateTime64({since:UInt32}, 3, 'UTC') AND min(at) < toDateTime64({until:UInt32}, 3, "
    "'UTC') ) AS m LEFT JOIN ( SELECT author_id AS user_id, weeks, first_at, last_at FROM "
    "message_activity_weeks_by_author FINAL WHERE guild_id = {guild_id:UInt64} ) AS a ON "
    "a.user_id = m.user_id LEFT JOIN ( SELECT user_id, "
    "groupUniqArray(toStartOfWeek(toTimeZone(joined_at, {tz:String}), 1)) AS weeks FROM "
    "voice_sessions WHERE guild_id = {guild_id:UInt64} AND joined_at >= "
    "toDateTime64({since:UInt32}, 3, 'UTC') - INTERVAL 8 DAY AND joined_at < "
    "toDateTime64({until:UInt32}, 3, 'UTC') + toIntervalDay(7 * {weeks:UInt16} + 8) GROUP "
    "BY user_id ) AS v ON v.user_id = m.user_id ) GROUP BY cohort ) ARRAY JOIN arrayMap(k "
    "-> toUInt16(k), range({weeks:UInt16})) AS n ORDER BY cohort, n"
)


def _retention_params(tz: str, weeks: int) -> dict[str, Any]:
    return {
        "guild_id": GUILD,
        "since": int(START.timestamp()),
        "until": int(END.timestamp()),
        "tz": tz,
        "bots": False,
        "weeks": weeks,
    }


async def _retention_0005(ro: Any, tz: str, weeks: int) -> list[tuple[Any, ...]]:
    p = _retention_params(tz, weeks)
    return [tuple(r) for r in (await ro.query(_RETENTION_0005, parameters=p)).result_rows]


async def _retention_0009(ro: Any, tz: str, weeks: int) -> list[tuple[Any, ...]]:
    p = _retention_params(tz, weeks)
    return [tuple(r) for r in (await ro.query(_RETENTION_0009, parameters=p)).result_rows]


async def _retention_daily(
    ro: Any, tz: str, weeks: int
) -> list[tuple[date, int, tuple[int, ...], tuple[int, ...]]]:
    p = _retention_params(tz, weeks)
    sizes = await ro.query(
        f"SELECT week, count() FROM ({_DAILY_COHORT}) GROUP BY week", parameters=p
    )
    joined = {w: int(n) for w, n in sizes.result_rows}
    matrices = []
    for activity in _DAILY_ACTIVITY:
        matrix = {w: [0] * weeks for w in joined}
        result = await ro.query(
            f"""
            WITH cohort AS ({_DAILY_COHORT}), activity AS ({activity})
            SELECT c.week, intDiv(toInt32(a.week) - toInt32(c.week), 7) AS n, uniqExact(c.user_id)
            FROM cohort AS c INNER JOIN activity AS a ON a.user_id = c.user_id
            WHERE a.week >= c.week AND n < {{weeks:UInt16}}
            GROUP BY c.week, n
            """,
            parameters=p,
        )
        for w, n, members in result.result_rows:
            matrix[w][int(n)] = int(members)
        matrices.append(matrix)
    return [(w, joined[w], tuple(matrices[0][w]), tuple(matrices[1][w])) for w in sorted(joined)]


def _with_db(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def _settle(ch: Any) -> float:
    """Wait (up to two minutes) for the database's background merges; the seconds waited."""
    t = time.perf_counter()
    for _ in range(240):
        merging = "SELECT count() FROM system.merges WHERE database = currentDatabase()"
        if not await ch.command(merging):
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - t


async def _median(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def _side_by_side(
    fns: dict[str, Callable[[], Awaitable[Any]]], runs: int, cpu: ServerCpu
) -> dict[str, tuple[float, float | None]]:
    """Per statement: the median wall time and ClickHouse's mean CPU seconds (None when the
    server is not embedded), the statements run in turn so that load falls on all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    used = dict.fromkeys(fns, 0.0)
    for _ in range(runs):
        for key, fn in fns.items():
            before = cpu.seconds().get("clickhouse")
            t = time.perf_counter()
            await fn()
            times[key].append(time.perf_counter() - t)
            after = cpu.seconds().get("clickhouse")
            if before is not None and after is not None:
                used[key] += after - before
    embedded = "clickhouse" in cpu.seconds()
    return {k: (statistics.median(times[k]), used[k] / runs if embedded else None) for k in fns}


async def main(stores: Endpoints, cpu: ServerCpu, messages: int, runs: int, quick: bool) -> None:
    from herwa.schema import migrate

    base = stores.clickhouse_url
    ro_base = stores.clickhouse_readonly_url
    name = f"herwa_qbench_{uuid.uuid4().hex[:8]}"
    url, ro_url = _with_db(base, name), _with_db(ro_base, name)
    # Only the ClickHouse half of the schema is needed; migrate() wants Postgres too.
    pg = stores.postgres_dsn
    import asyncpg

    admin = await asyncpg.connect(pg)
    await admin.execute(f'CREATE DATABASE "{name}"')
    ch = None
    try:
        await migrate(_with_db(pg, name), url)
        ch = await clickhouse_url_client(url, send_receive_timeout=3600)
        span = int((END - START).total_seconds())
        print(f"generating {messages:,} messages for guild {GUILD} …", flush=True)
        t = time.perf_counter()
        await ch.command(
            f"""
            INSERT INTO messages (message_id, guild_id, channel_id, author_id, created_at,
                                  kind, is_bot, version)
            SELECT 1000000000000 + number, {GUILD},
                   100 + toUInt64(pow(randCanonical(), 2) * 40),
                   10000 + toUInt64(pow(randCanonical(), 3) * 20000),
                   toDateTime64({int(START.timestamp())}, 3, 'UTC')
                       + toIntervalMillisecond(intDiv(number * {span * 1000}, {messages})),
                   'text', number % 97 = 0, 1
            FROM numbers({messages})
            """,
            settings={"max_insert_threads": 2},
        )
        await ch.command(
            f"""
            INSERT INTO member_events (guild_id, user_id, event, at, account_created_at,
                                       is_bot, version)
            SELECT {GUILD}, 10000 + number, 'join',
                   toDateTime64({int(START.timestamp())}, 3, 'UTC')
                       + toIntervalSecond(intDiv(number * {span}, 20000)),
                   toDateTime64('2020-01-01', 3, 'UTC'), false, 1
            FROM numbers(20000)
            """
        )
        await ch.command(
            f"""
            INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, channel_kind,
                joined_at, left_at, duration_seconds, muted_seconds, close_reason, is_bot,
                version)
            SELECT generateUUIDv4(), {GUILD}, 50, 10000 + number % 3000, 'voice', j,
                   j + toIntervalSecond(1800), 1800, 0, 'leave', false, 1
            FROM (SELECT number, toDateTime64({int(START.timestamp())}, 3, 'UTC')
                      + toIntervalSecond(intDiv(number * {span}, 200000)) AS j
                  FROM numbers(200000))
            """
        )
        gen = time.perf_counter() - t
        t = time.perf_counter()
        hours = [(GUILD, h) for h in range(int(START.timestamp()), int(END.timestamp()), 3600)]
        # Month by month, as the ETL would have done it batch by batch.
        for i in range(0, len(hours), 744):
            await rollups.recompute(ch, hours[i : i + 744])
        build = time.perf_counter() - t
        raw_rows = await ch.command(f"SELECT count() FROM messages WHERE guild_id = {GUILD}")
        rollup_15m = await ch.command("SELECT count() FROM message_activity_15m FINAL")
        rollup_h = await ch.command("SELECT count() FROM message_activity_hourly FINAL")
        rollup_d = await ch.command("SELECT count() FROM message_activity_author_days FINAL")
        rollup_w = await ch.command("SELECT count() FROM message_activity_weekly FINAL")
        rollup_a = await ch.command("SELECT count() FROM message_activity_weeks_by_author FINAL")
        joins = await ch.command("SELECT count() FROM member_joins")
        voice_m = await ch.command("SELECT count() FROM voice_starts_by_member FINAL")
        print(
            f"generated in {gen:.1f}s; rollups built in {build:.1f}s "
            f"(15-min rows {rollup_15m:,}, hourly rows {rollup_h:,}, author-day rows {rollup_d:,}, "
            f"weekly rows {rollup_w:,}, per-author week rows {rollup_a:,}, member join rows "
            f"{joins:,}, per-member voice rows {voice_m:,})"
        )
        # The merges the generation started compete with the queries for the 2 cores: timed
        # once they are done, as a server's queries mostly are.
        print(f"background merges settled in {await _settle(ch):.1f}s", flush=True)

        ro = await clickhouse_url_client(ro_url, send_receive_timeout=3600)
        Query = Callable[[Literal["rollup", "raw"]], Awaitable[Any]]

        def heatmap(tz: str) -> Query:
            return lambda s: analytics.heatmap(ro, GUILD, tz, START, END, source=s)

        def retention(tz: str) -> Query:
            return lambda s: analytics.retention(ro, GUILD, tz, START, END, weeks=12, source=s)

        zones = await asyncpg.connect(_with_db(pg, name))

        async def guild_zone(tz: str) -> None:
            """The guild's zone set as an admin sets it, its local weeks rebuilt as by the ETL."""
            await zones.execute(
                "INSERT INTO guilds (guild_id, timezone) VALUES ($1, $2) ON CONFLICT (guild_id)"
                " DO UPDATE SET timezone = EXCLUDED.timezone",
                GUILD,
                tz,
            )
            # Twice, as two ETL runs: the second deletes the rows of the zone left.
            await local_weeks.follow_zones(zones, ch)
            await local_weeks.follow_zones(zones, ch)
            await _settle(ch)
            assert await recorded_zone(ro, GUILD) == tz

        try:
            results = []
            for kind, tz, query in (
                ("heatmap", "Europe/Berlin", heatmap("Europe/Berlin")),
                ("heatmap", "Asia/Kolkata", heatmap("Asia/Kolkata")),
                ("retention", "Europe/Berlin", retention("Europe/Berlin")),
                ("retention", "Asia/Kolkata", retention("Asia/Kolkata")),
                ("retention", "Asia/Kathmandu", retention("Asia/Kathmandu")),
                ("retention", "Pacific/Kiritimati", retention("Pacific/Kiritimati")),
                ("retention", "America/Los_Angeles", retention("America/Los_Angeles")),
            ):
                a = await query("rollup")
                if not quick:
                    assert a == await query("raw"), f"{kind} {tz}: rollup and raw disagree"
                before_s = v5_s = raw_s = None
                timed: dict[str, tuple[float, float | None]] = {}
                if kind == "retention":
                    await guild_zone(tz)
                    a = await query("rollup")
                    any_zone = functools.partial(
                        analytics.retention, ro, GUILD, tz, START, END, weeks=12, source="any_zone"
                    )
                    assert await any_zone() == a
                    as_rows = [
                        (c.week, c.joined, n, c.active[n], c.voice_active[n])
                        for c in a
                        for n in range(12)
                    ]
                    assert await _retention_0005(ro, tz, 12) == as_rows
                    assert await _retention_0009(ro, tz, 12) == as_rows
                    timed = await _side_by_side(
                        {
                            "now": functools.partial(query, "rollup"),
                            "any zone": any_zone,
                            "0009": functools.partial(_retention_0009, ro, tz, 12),
                        },
                        runs,
                        cpu,
                    )
                    v5_s = await _median(lambda tz=tz: _retention_0005(ro, tz, 12), runs)
                    if not quick:
                        daily = await _retention_daily(ro, tz, 12)
                        assert daily == [(c.week, c.joined, c.active, c.voice_active) for c in a]
                        before_s = await _median(lambda tz=tz: _retention_daily(ro, tz, 12), runs)
                else:
                    timed = await _side_by_side(
                        {"now": functools.partial(query, "rollup")}, runs, cpu
                    )
                if not quick:
                    raw_s = await _median(lambda q=query: q("raw"), runs)
                results.append((kind, tz, timed, v5_s, before_s, raw_s))
        finally:
            await zones.close()
            await ro.close()
        print(f"\nguild {GUILD}: {raw_rows:,} message events; median (p50) of {runs} runs each")
        print(
            "retention: 1 year of weekly join cohorts x 12 weeks, messages and voice, in the"
            " guild's own zone ('now': the precomputed local weeks); 'any zone' is the statement"
            " for any other zone (the fallback); '0009' the statement before migration 0010 (all"
            " three run in turn; 'cpu' is the embedded ClickHouse's CPU per statement), '0005'"
            " as migration 0005 shipped it, 'daily' the per-(author, day) rollup queries before"
            " that"
        )

        def ms(seconds: float | None) -> str:
            return "" if seconds is None else f"{seconds * 1000:.1f}"

        print(
            f"{'query':<32}{'now ms':>9}{'cpu ms':>8}{'any zone ms':>13}{'cpu ms':>8}"
            f"{'0009 ms':>9}{'cpu ms':>8}{'0005 ms':>9}"
            f"{'daily ms':>10}{'raw ms':>10}{'target ms':>11}{'met':>5}"
        )
        met_all = True
        for kind, tz, timed, v5_s, before_s, raw_s in results:
            target = TARGET_MS[kind]
            now_s, now_cpu = timed["now"]
            any_s, any_cpu = timed.get("any zone", (None, None))
            prev_s, prev_cpu = timed.get("0009", (None, None))
            met = now_s * 1000 <= target
            met_all &= met
            print(
                f"{kind + ', ' + tz:<32}{ms(now_s):>9}{ms(now_cpu):>8}{ms(any_s):>13}"
                f"{ms(any_cpu):>8}{ms(prev_s):>9}"
                f"{ms(prev_cpu):>8}{ms(v5_s):>9}{ms(before_s):>10}{ms(raw_s):>10}"
                f"{'<= ' + format(target, '.0f'):>11}{'yes' if met else 'no':>5}"
            )
        print(f"target met: {'yes' if met_all else 'no'}")
    finally:
        if ch is not None:
            await ch.command(f"DROP DATABASE IF EXISTS {name}")
            await ch.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="leave out the daily and raw comparisons"
    )
    args = parser.parse_args()
    with bench_servers() as (stores, cpu):
        asyncio.run(main(stores, cpu, args.messages, args.runs, args.quick))
