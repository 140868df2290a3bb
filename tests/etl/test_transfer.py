"""The two ways a batch reaches ClickHouse: pulled by ClickHouse itself, or pushed by the ETL."""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from herwa.bot.snapshots import UPSERT as SNAPSHOT_UPSERT
from herwa.devstack import Endpoints
from herwa.etl.families import FAMILIES, WIRE_FORMAT, Family
from herwa.etl.low_water import load_cursors
from herwa.etl.runner import RunOptions, run_once
from herwa.etl.sync import claim, claim_sql, opt_out_horizon, prepare_session
from herwa.stores import PullSource, PullUnavailableError, clickhouse_url_client
from tests.etl._support import T0, ch_value, pending_rows, stage_messages, stage_other_families

OPTIONS = RunOptions(batch_rows=100, deadline_seconds=60, retention_hours=72, transfer="pull")


async def test_pulled_rows_are_the_rows_push_sends_in_any_session_zone(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    """Every family, column for column, loaded by a ClickHouse whose session zone is not UTC
    (Postgres hands ClickHouse timestamps without a zone)."""
    await stage_messages(pg, range(1, 121), step=timedelta(minutes=7, microseconds=999_999))
    await stage_other_families(pg)
    await pg.execute(
        "INSERT INTO message_events (message_id, guild_id, channel_id, thread_id, author_id,"
        " created_at, kind, is_bot) VALUES (500, 1, 10, 77, 100, $1, 'embed', true)",
        T0 + timedelta(microseconds=999_999),
    )
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES (7, 1, 11, $1)",
        T0 + timedelta(days=1),
    )
    # The run's steps by hand, for a ClickHouse client whose session zone is set.
    await prepare_session(pg)
    source = PullSource.from_dsn(migrated.postgres_dsn)
    horizon = await opt_out_horizon(pg)
    elsewhere = await clickhouse_url_client(
        migrated.clickhouse_url, settings={"session_timezone": "Asia/Kolkata"}
    )
    try:
        for cursor in (await load_cursors(pg)).values():
            while not cursor.caught_up:
                claimed = await claim(pg, cursor, 100, horizon, source=source)
                await claimed.load_and_commit(elsewhere)
    finally:
        await elsewhere.close()
    assert await pending_rows(pg, "message_events") == 0
    # The deleted message's hour, found from the pulled deletion, is queued for its rollups.
    # (Message 7 was sent at 10:49, in T0's hour.)
    assert [tuple(r) for r in await pg.fetch("SELECT guild_id, hour FROM etl_dirty_buckets")] == [
        (1, T0)
    ]

    # What push would have sent: the same SELECT, copied out by Postgres and inserted as is.
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        for family in FAMILIES:
            parts_out: list[bytes] = []

            async def collect(chunk: bytes, out: list[bytes] = parts_out) -> None:
                out.append(chunk)

            await pg.copy_from_query(
                claim_sql(family, 0, 2**62, ordered=True), output=collect, format="text"
            )
            pushed = f"pushed_{family.target_table}"
            await ch.command(f"CREATE TABLE {pushed} AS {family.target_table}")
            await ch.raw_insert(
                pushed, family.target_columns, insert_block=b"".join(parts_out), fmt=WIRE_FORMAT
            )
            columns = ", ".join(name for name, _ in family.columns)  # not the batch column
            sql = "SELECT {c} FROM {t} FINAL ORDER BY {c}"
            loaded = (await ch.query(sql.format(c=columns, t=family.target_table))).result_rows
            expected = (await ch.query(sql.format(c=columns, t=pushed))).result_rows
            assert loaded, family.name
            assert loaded == expected, family.name
    finally:
        await ch.close()


async def test_the_password_reaches_clickhouse_only_where_clickhouse_hides_it(
    migrated: Endpoints,
) -> None:
    """In the statement's text, as postgresql()'s password argument, which ClickHouse masks in
    its process list (and query log); a query parameter would travel in the request's URL."""
    source = PullSource.from_dsn(migrated.postgres_dsn)
    assert source.password not in repr(source)
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    watcher = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        pulling = asyncio.create_task(ch.query(source.select("SELECT pg_sleep(2) AS slept")))
        running: Sequence[Sequence[object]] = []
        for _ in range(40):
            await asyncio.sleep(0.05)
            result = await watcher.query(
                "SELECT * FROM system.processes WHERE query LIKE '%pg_sleep%'"
                " AND query NOT LIKE '%system.processes%'"
            )
            if running := result.result_rows:
                break
        await pulling
    finally:
        await ch.close()
        await watcher.close()
    assert running, "the pull never showed in system.processes"
    assert "'[HIDDEN]'" in repr(running)
    assert source.password not in repr(running)


async def test_the_password_never_travels_in_the_request_line(migrated: Endpoints) -> None:
    """The request line (its URL and any query parameters in it) reaches ClickHouse's trace log
    and every proxy's access log; a pull's password goes in the request body only. Recorded by
    a TCP relay between the client and ClickHouse."""
    source = PullSource.from_dsn(migrated.postgres_dsn)
    upstream = urllib.parse.urlsplit(migrated.clickhouse_url)
    sent = bytearray()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(upstream.hostname, upstream.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
            while data := await src.read(65536):
                if log:
                    sent.extend(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    netloc = upstream.netloc.rsplit("@", 1)
    via_relay = upstream._replace(netloc=f"{netloc[0]}@127.0.0.1:{port}")
    ch = await clickhouse_url_client(urllib.parse.urlunsplit(via_relay))
    try:
        await source.probe(ch, "in this test")
    finally:
        await ch.close()
        server.close()
    heads = [part.split(b"\r\n\r\n", 1)[0] for part in sent.split(b"POST ")[1:]]
    assert heads, "nothing went through the relay"
    password = source.password.encode()
    assert password in sent  # in a body, as postgresql()'s masked argument
    assert not [head for head in heads if password in head]
    assert not [head for head in heads if urllib.parse.quote(source.password).encode() in head]


async def test_an_upsert_between_the_claim_and_the_pull_loads_the_newest_count(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    """The claim commits before ClickHouse reads: a member-count upsert committed in between
    moves its row out of the claimed bounds, and the next run loads the new count."""
    day = T0.date()
    await pg.execute(SNAPSHOT_UPSERT, 1, day, 40, T0)

    async def upsert_after_the_claim(at: str, family: Family) -> None:
        if at == "claimed" and family.name == "member_count_snapshots":
            await pg.execute(SNAPSHOT_UPSERT, 1, day, 42, T0 + timedelta(hours=1))

    first = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS, fault=upsert_after_the_claim
    )
    assert first.outcome == "caught_up", first.error
    assert await pending_rows(pg, "member_count_snapshots") == 1
    second = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert second.outcome == "caught_up", second.error
    assert await pending_rows(pg, "member_count_snapshots") == 0
    sql = "SELECT member_count FROM member_count_snapshots FINAL"
    assert await ch_value(migrated, sql) == 42


async def test_a_postgres_whose_timestamps_clickhouse_cannot_read_is_refused(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 11))
    database = await pg.fetchval("SELECT current_database()")
    await pg.execute(f"ALTER DATABASE \"{database}\" SET DateStyle = 'SQL, DMY'")
    failed = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert failed.outcome == "failed"
    assert "DateStyle 'SQL, DMY'" in (failed.error or "")
    assert await pending_rows(pg, "message_events") == 10
    # Push renders in its own session's DateStyle.
    pushed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, replace(OPTIONS, transfer="push")
    )
    assert pushed.outcome == "caught_up", pushed.error
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_clickhouse_that_cannot_reach_postgres_fails_the_run_and_loses_nothing(
    migrated: Endpoints, pg: asyncpg.Connection
) -> None:
    await stage_messages(pg, range(1, 151))
    dsn = urllib.parse.urlsplit(migrated.postgres_dsn)
    unreachable = dsn._replace(netloc=f"{dsn.username}:{dsn.password}@127.0.0.1:{_closed_port()}")
    options = replace(OPTIONS, pull_postgres_dsn=urllib.parse.urlunsplit(unreachable))

    failed = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, options)
    assert failed.outcome == "failed"
    assert "PullUnavailableError" in (failed.error or "")
    assert "HERWA_ETL_TRANSFER=push" in (failed.error or "")
    assert str(dsn.password) not in (failed.error or "")
    assert await pg.fetchval("SELECT error FROM etl_runs") == failed.error
    assert await pending_rows(pg, "message_events") == 150
    assert await ch_value(migrated, "SELECT count() FROM messages") == 0

    pushed = await run_once(
        migrated.postgres_dsn, migrated.clickhouse_url, None, replace(options, transfer="push")
    )
    assert pushed.outcome == "caught_up", pushed.error
    assert pushed.stats.rows_moved["message_events"] == 150
    assert await pending_rows(pg, "message_events") == 0
    assert await ch_value(migrated, "SELECT count() FROM messages FINAL") == 150


def test_a_pull_source_is_read_from_the_dsn() -> None:
    source = PullSource.from_dsn("postgresql://etl:p%40ss%3Aword@db.herwa.svc/herwa")
    assert source == PullSource("db.herwa.svc:5432", "herwa", "etl", "p@ss:word")
    assert PullSource.from_dsn("postgres://etl:x@10.0.0.5:6432").database == "etl"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://etl:x@db/herwa?sslmode=verify-full",  # ClickHouse cannot verify for us
        "postgresql://etl:x@db1,db2/herwa",
        "postgresql://etl:x@/herwa?host=/var/run/postgresql",
        "postgresql://etl:x@db:port/herwa",
    ],
)
def test_a_dsn_clickhouse_cannot_use_is_refused_with_the_way_out(dsn: str) -> None:
    with pytest.raises(PullUnavailableError, match="HERWA_ETL_TRANSFER=push") as caught:
        PullSource.from_dsn(dsn)
    assert "x@" not in str(caught.value)
