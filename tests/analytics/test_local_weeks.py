"""Retention from each author's local weeks precomputed in the guild's time zone (ClickHouse
migration 0013), kept by the real ETL, against the raw messages and the any-zone statement.

Every guild gets the same messages (UTC times, 2024), on both sides of the local week edges of
the zones under test: Sunday 10:00 (Monday 00:00 in Pacific/Kiritimati, +14:00), Sunday 18:15
(Asia/Kathmandu, +05:45), Monday 08:00 and, once daylight saving time starts on Sunday 03-10,
07:00 (America/Los_Angeles). Author 520 writes at 03-11 06:59 and 07:00: one UTC week, two Los
Angeles weeks; a later run loads the deletion of the first, which must empty that local week
while the UTC week stays active.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from clickhouse_connect.driver.asyncclient import AsyncClient

from herwa import analytics
from herwa.analytics.retention import recorded_zone
from herwa.devstack import Endpoints
from herwa.etl import local_weeks
from herwa.etl.runner import RunOptions, run_once
from herwa.stores import clickhouse_url_client
from tests.analytics._rollup_data import CHANNEL, Z

OPTIONS = RunOptions(batch_rows=1000)
SPAN = (Z("2024-02-20 00:00"), Z("2024-04-01 00:00"))
WEEKS = 6
MEMBERS = range(500, 508)
# Around each local week edge of the zones under test, the Sundays and Mondays of March 2024.
_EDGES = ("09:59", "10:00", "18:14", "18:15")  # Sundays: Kiritimati, Kathmandu
_MONDAY_EDGES = ("06:59", "07:00", "07:59", "08:00")  # Mondays: Los Angeles (PDT, PST)
_TIMES = [f"2024-03-{day:02} {hm}" for day in (3, 10, 17, 24, 31) for hm in _EDGES] + [
    f"2024-03-{day:02} {hm}" for day in (4, 11, 18, 25) for hm in _MONDAY_EDGES
]
# (offset of the message id, author, UTC time): the authors skip weeks in turn.
MESSAGES = [(i, 500 + i * 3 % 8, t) for i, t in enumerate(_TIMES)] + [
    (100, 520, "2024-03-11 06:59"),  # deleted by a later run
    (101, 520, "2024-03-11 07:00"),
]
DELETED = 100
# (member, UTC start) of voice sessions on the same edges, in another rotation of the members.
VOICE = [(500 + i * 5 % 8, t) for i, t in enumerate(_TIMES)]
# member -> their join (UTC), every 3 days and 5 hours; 520 never joins (checked in the table).
JOINS = {
    m: Z("2024-02-28 12:00") + timedelta(days=3 * k, hours=5 * k) for k, m in enumerate(MEMBERS)
}


def _expected_weeks(tz: str, deleted: bool) -> list[tuple[int, list[date]]]:
    """Per author, the local Mondays in ``tz`` of their live messages: what the table holds."""
    out: dict[int, set[date]] = {}
    for i, author, at in MESSAGES:
        if deleted and i == DELETED:
            continue
        out.setdefault(author, set()).add(_local_monday(at, tz))
    return [(a, sorted(w)) for a, w in sorted(out.items())]


def _local_monday(at: str, tz: str) -> date:
    """The local Monday in ``tz`` of the week of ``at`` (UTC)."""
    local = Z(at).astimezone(ZoneInfo(tz)).date()
    return local - timedelta(days=local.weekday())


async def _stage(pg: asyncpg.Connection, guild: int, tz: str) -> None:
    await pg.execute("INSERT INTO guilds (guild_id, timezone) VALUES ($1, $2)", guild, tz)
    await pg.executemany(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " VALUES ($1, $2, 'join', $3, $3)",
        [(guild, m, at) for m, at in JOINS.items()],
    )
    await pg.executemany(
        "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
        " created_at, kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', false)",
        [(guild * 1000 + i, guild, CHANNEL, a, Z(t)) for i, a, t in MESSAGES],
    )
    await _stage_voice(pg, guild, VOICE)


async def _stage_voice(pg: asyncpg.Connection, guild: int, sessions: list[tuple[int, str]]) -> None:
    await pg.executemany(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), $1, 50, $2, $3, $4, 'leave')",
        [(guild, m, Z(t), Z(t) + timedelta(minutes=30)) for m, t in sessions],
    )


async def _voice_weeks(ro: AsyncClient, guild: int) -> dict[str, dict[int, list[date]]]:
    """The guild's voice weeks by zone and member."""
    result = await ro.query(
        "SELECT tz, user_id, weeks FROM voice_local_weeks FINAL WHERE guild_id = {g:UInt64}",
        parameters={"g": guild},
    )
    out: dict[str, dict[int, list[date]]] = {}
    for tz, user, weeks in result.result_rows:
        out.setdefault(str(tz), {})[int(user)] = list(weeks)
    return out


def _expected_voice(tz: str, sessions: list[tuple[int, str]]) -> dict[int, list[date]]:
    out: dict[int, set[date]] = {}
    for member, at in sessions:
        out.setdefault(member, set()).add(_local_monday(at, tz))
    return {m: sorted(w) for m, w in sorted(out.items())}


async def _delete_message(pg: asyncpg.Connection, guild: int) -> None:
    await pg.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES ($1, $2, $3, $4)",
        guild * 1000 + DELETED,
        guild,
        CHANNEL,
        Z("2024-03-20 00:00"),
    )


async def _run(endpoints: Endpoints) -> None:
    result = await run_once(endpoints.postgres_dsn, endpoints.clickhouse_url, None, OPTIONS)
    assert result.outcome == "caught_up", result.error


async def _settle(endpoints: Endpoints) -> None:
    """Two runs: the first moves a guild to its zone, the next deletes the zone it left."""
    await _run(endpoints)
    await _run(endpoints)


@pytest.fixture
async def ro(migrated: Endpoints) -> AsyncIterator[AsyncClient]:
    client = await clickhouse_url_client(migrated.clickhouse_readonly_url)
    yield client
    await client.close()


async def _stored(ro: AsyncClient, guild: int) -> dict[str, list[tuple[int, list[date]]]]:
    """The guild's local weeks by zone, authors without a live message left out."""
    result = await ro.query(
        "SELECT tz, author_id, weeks FROM message_local_weeks FINAL"
        " WHERE guild_id = {g:UInt64} AND notEmpty(weeks) ORDER BY tz, author_id",
        parameters={"g": guild},
    )
    out: dict[str, list[tuple[int, list[date]]]] = {}
    for tz, author, weeks in result.result_rows:
        out.setdefault(str(tz), []).append((int(author), list(weeks)))
    return out


async def _all_agree(ro: AsyncClient, guild: int, tz: str) -> list[analytics.Cohort]:
    """Retention as answered (the precomputed weeks when ``tz`` is recorded), by each statement
    that can answer in ``tz``: all equal to the raw messages'."""
    raw = await analytics.retention(ro, guild, tz, *SPAN, weeks=WEEKS, source="raw")
    assert await analytics.retention(ro, guild, tz, *SPAN, weeks=WEEKS) == raw, tz
    any_zone = await analytics.retention(ro, guild, tz, *SPAN, weeks=WEEKS, source="any_zone")
    assert any_zone == raw, tz
    if await recorded_zone(ro, guild) == tz:
        precomputed = await analytics.retention(
            ro, guild, tz, *SPAN, weeks=WEEKS, source="local_weeks"
        )
        assert precomputed == raw, tz
    else:
        with pytest.raises(ValueError, match=r"local weeks are (in \S+|incomplete), not in"):
            await analytics.retention(ro, guild, tz, *SPAN, weeks=WEEKS, source="local_weeks")
    return raw


ZONES = {31: "Asia/Kathmandu", 32: "Pacific/Kiritimati", 33: "America/Los_Angeles"}


async def test_the_guilds_zone_is_precomputed_exactly_and_follows_deletions(
    migrated: Endpoints, pg: asyncpg.Connection, ro: AsyncClient
) -> None:
    for guild, tz in ZONES.items():
        await _stage(pg, guild, tz)
    await _settle(migrated)
    for guild, tz in ZONES.items():
        assert await recorded_zone(ro, guild) == tz
        assert await _stored(ro, guild) == {tz: _expected_weeks(tz, deleted=False)}
        cohorts = await _all_agree(ro, guild, tz)
        # Not an agreement on nothing: members are active after their join weeks.
        assert sum(n or 0 for c in cohorts for n in c.active[1:]) > 0, tz
        await _all_agree(ro, guild, "UTC")  # another zone: answered by the any-zone statement

    for guild in ZONES:
        await _delete_message(pg, guild)
    await _run(migrated)
    for guild, tz in ZONES.items():
        assert await _stored(ro, guild) == {tz: _expected_weeks(tz, deleted=True)}
        await _all_agree(ro, guild, tz)
    # In Los Angeles author 520's week of 03-04 went; its UTC week (03-11) is still active.
    la = dict((await _stored(ro, 33))["America/Los_Angeles"])
    assert la[520] == [date(2024, 3, 11)]
    assert _expected_weeks("America/Los_Angeles", deleted=False)[-1] == (
        520,
        [date(2024, 3, 4), date(2024, 3, 11)],
    )


async def test_a_zone_change_rebuilds_on_the_next_run(
    migrated: Endpoints, pg: asyncpg.Connection, ro: AsyncClient
) -> None:
    guild = 31
    await _stage(pg, guild, "Asia/Kathmandu")
    await _settle(migrated)
    assert await recorded_zone(ro, guild) == "Asia/Kathmandu"

    await pg.execute(
        "UPDATE guilds SET timezone = 'America/Los_Angeles' WHERE guild_id = $1", guild
    )
    # Until the next run the new zone is answered by the any-zone statement, the old one still
    # from the precomputed weeks: both exact.
    await _all_agree(ro, guild, "America/Los_Angeles")
    await _all_agree(ro, guild, "Asia/Kathmandu")

    await _run(migrated)
    assert await recorded_zone(ro, guild) == "America/Los_Angeles"
    # The new zone's rows are complete; the old zone's stay for a reader that read the old
    # zone just before, until the next run.
    assert await _stored(ro, guild) == {
        "America/Los_Angeles": _expected_weeks("America/Los_Angeles", deleted=False),
        "Asia/Kathmandu": _expected_weeks("Asia/Kathmandu", deleted=False),
    }
    await _run(migrated)
    assert await _stored(ro, guild) == {
        "America/Los_Angeles": _expected_weeks("America/Los_Angeles", deleted=False)
    }
    await _all_agree(ro, guild, "America/Los_Angeles")
    await _all_agree(ro, guild, "Asia/Kathmandu")

    # Back to the default: UTC, like a guild the migration built.
    await pg.execute("UPDATE guilds SET timezone = 'UTC' WHERE guild_id = $1", guild)
    await _settle(migrated)
    assert await recorded_zone(ro, guild) == "UTC"
    assert await _stored(ro, guild) == {"UTC": _expected_weeks("UTC", deleted=False)}
    await _all_agree(ro, guild, "UTC")


async def test_weeks_an_older_etl_rewrote_alone_are_healed_by_the_next_run(
    migrated: Endpoints,
    pg: asyncpg.Connection,
    ro: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ETL of the release before 0013 (in flight during the upgrade, or after a rollback)
    rewrites the per-author UTC weeks and not the local ones: the next run of this release
    writes those authors' local weeks again."""
    guild = 34
    await _stage(pg, guild, "Asia/Kathmandu")
    await _settle(migrated)
    late = "2024-04-10 12:00"  # a week author 500 had no message in
    await pg.execute(
        "INSERT INTO message_events (message_id, guild_id, channel_id, author_id,"
        " created_at, kind, is_bot) VALUES ($1, $2, $3, 500, $4, 'text', false)",
        guild * 1000 + 999,
        guild,
        CHANNEL,
        Z(late),
    )
    original = local_weeks.rewrite

    async def older_release(*_: object, **__: object) -> None:
        return None

    monkeypatch.setattr(local_weeks, "rewrite", older_release)
    await _run(migrated)
    expected = dict(_expected_weeks("Asia/Kathmandu", deleted=False))
    stale = dict((await _stored(ro, guild))["Asia/Kathmandu"])
    assert stale == expected  # the new week is missing
    local = Z(late).astimezone(ZoneInfo("Asia/Kathmandu")).date()
    expected[500] = sorted({*expected[500], local - timedelta(days=local.weekday())})
    assert stale[500] != expected[500]

    monkeypatch.setattr(local_weeks, "rewrite", original)
    await _run(migrated)  # nothing new staged: only the heal writes
    assert dict((await _stored(ro, guild))["Asia/Kathmandu"]) == expected
    await _all_agree(ro, guild, "Asia/Kathmandu")


async def test_a_rebuild_cut_short_is_finished_by_the_next_run(
    migrated: Endpoints,
    pg: asyncpg.Connection,
    ro: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guild = 32
    await _stage(pg, guild, "UTC")
    await _run(migrated)
    await pg.execute("UPDATE guilds SET timezone = 'Pacific/Kiritimati' WHERE guild_id = $1", guild)
    await _run(migrated)  # the rebuild: the new zone's rows and its zone row
    original = local_weeks._delete_other_zones

    async def crash(*_: object) -> None:
        raise RuntimeError("the ETL died here")

    # The next run dies deleting the old zone's rows.
    monkeypatch.setattr(local_weeks, "_delete_other_zones", crash)
    failed = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert failed.outcome == "failed"
    assert await recorded_zone(ro, guild) == "Pacific/Kiritimati"
    assert set(await _stored(ro, guild)) == {"UTC", "Pacific/Kiritimati"}
    await _all_agree(ro, guild, "Pacific/Kiritimati")

    monkeypatch.setattr(local_weeks, "_delete_other_zones", original)
    await _run(migrated)
    assert await _stored(ro, guild) == {
        "Pacific/Kiritimati": _expected_weeks("Pacific/Kiritimati", deleted=False)
    }
    await _all_agree(ro, guild, "Pacific/Kiritimati")
    await _all_agree(ro, guild, "UTC")


async def test_rows_of_a_rebuild_cut_short_go_when_the_zone_is_set_back(
    migrated: Endpoints,
    pg: asyncpg.Connection,
    ro: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guild = 33
    await _stage(pg, guild, "Asia/Kathmandu")
    await _settle(migrated)
    await pg.execute("UPDATE guilds SET timezone = 'Pacific/Kiritimati' WHERE guild_id = $1", guild)
    original = local_weeks._record

    async def crash_before_the_new_zone(
        ch: AsyncClient, guild: int, tz: str, *, others_deleted: bool, voice: bool
    ) -> None:
        if tz == "Pacific/Kiritimati":
            raise RuntimeError("the ETL died here")
        await original(ch, guild, tz, others_deleted=others_deleted, voice=voice)

    # The new zone's rows are written, the zone row still names the old one.
    monkeypatch.setattr(local_weeks, "_record", crash_before_the_new_zone)
    failed = await run_once(migrated.postgres_dsn, migrated.clickhouse_url, None, OPTIONS)
    assert failed.outcome == "failed"
    assert await recorded_zone(ro, guild) == "Asia/Kathmandu"
    assert set(await _stored(ro, guild)) == {"Asia/Kathmandu", "Pacific/Kiritimati"}
    await _all_agree(ro, guild, "Asia/Kathmandu")

    # The admin sets the old zone back: nothing to rebuild, but the orphaned rows go.
    monkeypatch.setattr(local_weeks, "_record", original)
    await pg.execute("UPDATE guilds SET timezone = 'Asia/Kathmandu' WHERE guild_id = $1", guild)
    await _run(migrated)
    assert await _stored(ro, guild) == {
        "Asia/Kathmandu": _expected_weeks("Asia/Kathmandu", deleted=False)
    }
    await _all_agree(ro, guild, "Asia/Kathmandu")


async def test_a_bad_zone_in_postgres_keeps_the_recorded_one(
    migrated: Endpoints,
    pg: asyncpg.Connection,
    ro: AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _stage(pg, 31, "Asia/Kathmandu")
    await _stage(pg, 33, "Mars/Olympus_Mons")  # never valid: stays in UTC, the migration's
    await _run(migrated)
    await pg.execute("UPDATE guilds SET timezone = 'Asia/Kathmandu ' WHERE guild_id = 31")
    with caplog.at_level(logging.WARNING, logger="herwa.etl.local_weeks"):
        await _run(migrated)
    warned = [r.getMessage() for r in caplog.records if r.name == "herwa.etl.local_weeks"]
    assert any("'Asia/Kathmandu '" in m and "Asia/Kathmandu" in m for m in warned), warned
    assert any("'Mars/Olympus_Mons'" in m for m in warned), warned
    assert await recorded_zone(ro, 31) == "Asia/Kathmandu"
    assert await recorded_zone(ro, 33) == "UTC"
    assert await _stored(ro, 31) == {"Asia/Kathmandu": _expected_weeks("Asia/Kathmandu", False)}
    await _all_agree(ro, 31, "Asia/Kathmandu")
    await _all_agree(ro, 33, "UTC")


async def test_voice_weeks_follow_the_zone_and_each_later_batch(
    migrated: Endpoints, pg: asyncpg.Connection, ro: AsyncClient
) -> None:
    guild = 31
    await _stage(pg, guild, "Asia/Kathmandu")
    await _settle(migrated)
    assert await _voice_weeks(ro, guild) == {
        "Asia/Kathmandu": _expected_voice("Asia/Kathmandu", VOICE)
    }
    cohorts = await _all_agree(ro, guild, "Asia/Kathmandu")
    assert any(n for c in cohorts for n in c.voice_active), "no voice-active member: a weak test"

    # A later batch: a member's first session in a new local week (Sunday 18:15 UTC is Monday
    # in Kathmandu), and another's session in a week they already had.
    later = [(501, "2024-03-24 18:15"), (502, "2024-03-17 18:14")]
    await _stage_voice(pg, guild, later)
    await _run(migrated)
    assert await _voice_weeks(ro, guild) == {
        "Asia/Kathmandu": _expected_voice("Asia/Kathmandu", VOICE + later)
    }
    assert await _all_agree(ro, guild, "Asia/Kathmandu") != cohorts

    # The zone changes: the voice weeks move with the message weeks.
    await pg.execute("UPDATE guilds SET timezone = 'Pacific/Kiritimati' WHERE guild_id = $1", guild)
    await _settle(migrated)
    assert await _voice_weeks(ro, guild) == {
        "Pacific/Kiritimati": _expected_voice("Pacific/Kiritimati", VOICE + later)
    }
    await _all_agree(ro, guild, "Pacific/Kiritimati")


async def test_voice_weeks_no_batch_of_this_release_wrote_are_healed(
    migrated: Endpoints, pg: asyncpg.Connection, ro: AsyncClient
) -> None:
    """As after migration 0014, or a run of the release before it: a zone row that does not
    say the voice weeks are complete, and a session loaded without a batch."""
    guild = 32
    await _stage(pg, guild, "Asia/Kathmandu")
    await _settle(migrated)
    ch = await clickhouse_url_client(migrated.clickhouse_url)
    try:
        await ch.command(
            "INSERT INTO message_local_weeks_zone (guild_id, tz, others_deleted, version)"
            " SELECT {g:UInt64}, 'Asia/Kathmandu', true, {v:UInt64}",
            parameters={"g": guild, "v": time.time_ns()},
        )
        await ch.command(
            "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, channel_kind,"
            " joined_at, left_at, duration_seconds, muted_seconds, close_reason, is_bot, version)"
            " SELECT generateUUIDv4(), {g:UInt64}, 50, 503, 'voice',"
            " toDateTime64('2024-03-31 18:15:00', 3, 'UTC'),"
            " toDateTime64('2024-03-31 18:45:00', 3, 'UTC'), 1800, 0, 'leave', false, 1",
            parameters={"g": guild},
        )
        # Not complete: retention reads the voice sets, and still answers exactly.
        assert await recorded_zone(ro, guild) is None
        await _all_agree(ro, guild, "Asia/Kathmandu")

        await _run(migrated)
        assert await recorded_zone(ro, guild) == "Asia/Kathmandu"
        sessions = [*VOICE, (503, "2024-03-31 18:15")]
        assert await _voice_weeks(ro, guild) == {
            "Asia/Kathmandu": _expected_voice("Asia/Kathmandu", sessions)
        }
        unbatched = "SELECT count() FROM voice_sessions WHERE loaded_batch = 0"
        assert await ch.command(unbatched) == 0
    finally:
        await ch.close()
    await _all_agree(ro, guild, "Asia/Kathmandu")


def test_the_messages_sit_on_the_local_week_edges() -> None:
    """Guards the data: each zone's local Monday 00:00 is among the times, a minute before too."""
    for tz, at in (
        ("Pacific/Kiritimati", "2024-03-10 10:00"),
        ("Asia/Kathmandu", "2024-03-10 18:15"),
        ("America/Los_Angeles", "2024-03-04 08:00"),
        ("America/Los_Angeles", "2024-03-11 07:00"),
    ):
        local = Z(at).astimezone(ZoneInfo(tz))
        assert (local.weekday(), local.hour, local.minute) == (0, 0, 0), (tz, at)
        assert at in _TIMES
        before = (Z(at) - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M")
        assert before in _TIMES, before
