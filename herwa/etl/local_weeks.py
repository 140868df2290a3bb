"""Each member's active LOCAL weeks, kept in their server's time zone (ClickHouse 0013, 0014).

Retention reads ``message_local_weeks`` when the zone asked for is the one recorded for the
server in ``message_local_weeks_zone`` (no row: 'UTC', what the migration built). The rollups'
recompute (rollups.py) rewrites the rows of every author whose UTC weeks it rewrote, in the
server's recorded zone, with :func:`local_mondays`. This module keeps the recorded zone equal
to the server's setting in Postgres (``guilds.timezone``): :func:`follow_zones`, once per ETL
run, rebuilds every server whose zone there differs.

A rebuild goes in an order that a crash anywhere leaves for the next run, and that a reader
never sees half done:

1. the zone row is marked ``others_deleted = false``: rows of another zone may remain;
2. every author's rows are written in the new zone, from ``message_activity_weeks_by_author``;
3. the zone row names the new zone (still not clean): readers switch to the complete rows.

The next run, finding the server's zone current but not clean:

4. deletes the rows of every other zone;
5. marks the zone row clean.

Steps 4 and 5 wait for the next run because a reader reads the zone, then the rows, in two
statements: one that read the old zone just before step 3 still finds that zone's rows. They
also remove the rows of a rebuild that crashed and whose zone was then set back.

An ETL of the release before 0013 (a run still going when the migration ran, or a rollback)
rewrites authors' per-UTC-week arrays and not their local weeks. Every writer of this release
gives local weeks the version of the arrays they come from or a newer one, so arrays newer than
every local week were written by such a run: :func:`heal`, first in every run, writes those
authors' local weeks again.

Voice weeks (``voice_local_weeks``, ClickHouse 0014) live beside them, in the same zone and by
the same rebuild, which writes both before the zone row names the new zone and deletes both
after. Each is written from the member's whole set of session starts
(``voice_starts_by_member``), so a rewrite is exact whatever came before:

* :func:`rewrite_voice`, for the members of every voice batch loaded since the last run
  (rollups.flush_voice, by the sessions' ``loaded_batch``);
* :func:`heal_voice`, first in every run, for what no batch of this release covered: every
  member of a server whose zone row does not say its voice weeks are complete (the migration
  leaves them so; a zone row written by the release before does), and the members of sessions
  loaded with no batch (before the migration, or by the release before), which it then marks.
  Only then does it say the weeks are complete: until then retention reads the voice sets.

The zone is checked with zoneinfo, as the analytics check the zone they are asked for, and
against ClickHouse's own list: a zone Postgres holds that either does not know is logged and the
server keeps its recorded zone, so one server's bad setting never fails the run.

Both steps and the recompute run inside the ETL's lock and one after another (the runner calls
:func:`follow_zones` after the last recompute), so a recompute never writes a zone a rebuild is
replacing.
"""

# ruff: noqa: S608 - identifiers in SQL are this module's constants; values are bound.

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import asyncpg

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

# What a server without a zone row is in: the migration built every server's rows in it, and it
# is guilds.timezone's default.
DEFAULT_ZONE = "UTC"
# The tables of per-member weeks kept in a server's recorded zone.
_ZONED_TABLES = ("message_local_weeks", "voice_local_weeks")


def local_mondays(first_at: str, last_at: str) -> str:
    """SQL: the distinct local Mondays in the zone bound as ``tz`` (a constant: toTimeZone
    takes no per-row zone) of the per-UTC-week first and last times, ascending (migration
    0005: exactly the local weeks with a message)."""
    return (
        "arraySort(arrayDistinct(arrayMap(t -> toStartOfWeek(toTimeZone(t, {tz:String}), 1),"
        f" arrayConcat({first_at}, {last_at}))))"
    )


async def _by_recorded_zone(ch: AsyncClient, guilds: list[int]) -> list[tuple[str, list[int]]]:
    """These guilds grouped by their recorded zone, zones in order."""
    recorded = await recorded_zones(ch, guilds)
    by_zone: dict[str, list[int]] = {}
    for guild in guilds:
        zone = recorded[guild].tz if guild in recorded else DEFAULT_ZONE
        by_zone.setdefault(zone, []).append(guild)
    return sorted(by_zone.items())


async def rewrite(
    ch: AsyncClient,
    guilds: list[int],
    authors: str,
    parameters: Mapping[str, object],
    *,
    version: str = "{version:UInt64}",
    settings: Mapping[str, object] | None = None,
) -> None:
    """Write again, in each guild's recorded zone, the local weeks of the (guild_id,
    author_id) pairs ``authors`` selects (SQL, with ``parameters``) among these guilds, from
    their per-UTC-week arrays; ``version`` is the rows' version (SQL). One statement per zone,
    as toTimeZone takes only a constant zone (a batch's guilds are in few zones)."""
    for zone, zone_guilds in await _by_recorded_zone(ch, guilds):
        await ch.command(
            f"""
            INSERT INTO message_local_weeks (guild_id, tz, author_id, weeks, version)
            SELECT guild_id, {{tz:String}}, author_id, {local_mondays("first_at", "last_at")},
                   {version}
            FROM message_activity_weeks_by_author FINAL
            WHERE guild_id IN {{zone_guilds:Array(UInt64)}} AND (guild_id, author_id) IN ({authors})
            """,
            parameters={**parameters, "tz": zone, "zone_guilds": zone_guilds},
            settings=dict(settings or {}),
        )


def _voice_mondays() -> str:
    """SQL: the distinct local Mondays (zone bound as ``tz``) of a member's session starts."""
    return (
        "arraySort(arrayDistinct(arrayMap(t -> toStartOfWeek(toTimeZone(t, {tz:String}), 1),"
        " joined_at)))"
    )


async def rewrite_voice(
    ch: AsyncClient, guilds: list[int], members: str, parameters: Mapping[str, object]
) -> None:
    """Write again, in each guild's recorded zone, the voice weeks of the (guild_id, user_id)
    pairs ``members`` selects (SQL, with ``parameters``) among these guilds, from their whole
    set of session starts: exact whatever was written before."""
    for zone, zone_guilds in await _by_recorded_zone(ch, guilds):
        await ch.command(
            f"""
            INSERT INTO voice_local_weeks (guild_id, tz, user_id, weeks, version)
            SELECT guild_id, {{tz:String}}, user_id, {_voice_mondays()}, {{voice_version:UInt64}}
            FROM voice_starts_by_member FINAL
            WHERE guild_id IN {{zone_guilds:Array(UInt64)}} AND (guild_id, user_id) IN ({members})
            """,
            parameters={
                **parameters,
                "tz": zone,
                "zone_guilds": zone_guilds,
                "voice_version": time.time_ns() // 1_000_000,
            },
            settings={"optimize_on_insert": 0},
        )


async def heal_voice(ch: AsyncClient) -> int:
    """Write the voice weeks nothing of this release wrote (ClickHouse 0014); returns how many
    servers it touched.

    Those are every member of a server whose zone row says its voice weeks are incomplete (all
    servers with voice, after the migration; a zone row written by the release before), and
    the members of sessions loaded with no batch (before the migration, or by the release
    before), which are then marked as rewritten (loaded_batch 1). The zone rows say complete
    last, so a reader never takes half-written weeks for whole ones. The run calls this first,
    before anything of its own writes voice weeks."""
    result = await ch.query(
        "SELECT guild_id FROM message_local_weeks_zone GROUP BY guild_id"
        " HAVING NOT argMax(voice, version) ORDER BY guild_id"
    )
    incomplete = [int(g) for (g,) in result.result_rows]
    unbatched = "SELECT DISTINCT guild_id, user_id FROM voice_sessions WHERE loaded_batch = 0"
    result = await ch.query(f"SELECT DISTINCT guild_id FROM ({unbatched}) ORDER BY guild_id")
    loose = [int(g) for (g,) in result.result_rows]
    guilds = sorted({*incomplete, *loose})
    if not guilds:
        return 0
    log.info(
        "voice weeks: rewriting %d servers whose weeks are incomplete and %d with sessions"
        " loaded without a batch (ClickHouse 0014, or an ETL of the release before)",
        len(incomplete),
        len(loose),
    )
    members = (
        "SELECT guild_id, user_id FROM voice_starts_by_member"
        " WHERE guild_id IN {incomplete:Array(UInt64)}"
        f" UNION ALL {unbatched}"
    )
    await rewrite_voice(ch, guilds, members, {"incomplete": incomplete})
    if loose:
        await ch.command(
            "ALTER TABLE voice_sessions UPDATE loaded_batch = 1 WHERE loaded_batch = 0",
            settings={"mutations_sync": 2},
        )
    recorded = await recorded_zones(ch, incomplete)
    for guild in incomplete:
        now = recorded[guild]
        await _record(ch, guild, now.tz, others_deleted=now.others_deleted, voice=True)
    return len(guilds)


async def heal(ch: AsyncClient) -> int:
    """Write again the local weeks of every author whose per-UTC-week arrays are newer than
    any local weeks written; returns how many servers it touched.

    Every writer of this release gives an author's local weeks the version of the arrays
    they come from, or a newer one. An ETL of a release before 0013 (a run still going when
    the migration ran, or a rollback) rewrites the arrays and not the local weeks, always
    after this release's last write, as runs take turns under the ETL's lock. The run calls
    this first, before anything of its own writes local weeks."""
    newest = (await ch.query("SELECT max(version) FROM message_local_weeks")).result_rows[0][0]
    stale = (
        "SELECT guild_id, author_id FROM message_activity_weeks_by_author"
        " WHERE version > {newest:UInt64}"
    )
    result = await ch.query(
        f"SELECT DISTINCT guild_id FROM ({stale}) ORDER BY guild_id",
        parameters={"newest": int(newest)},
    )
    guilds = [int(g) for (g,) in result.result_rows]
    if guilds:
        log.warning(
            "%d servers' per-author weeks were rewritten by an ETL that does not keep their"
            " local weeks (a release before ClickHouse 0013): rewriting those",
            len(guilds),
        )
        await rewrite(ch, guilds, stale, {"newest": int(newest)}, version="version")
    return len(guilds)


@dataclass(frozen=True)
class Recorded:
    tz: str
    others_deleted: bool
    voice: bool  # the voice weeks are complete in tz (ClickHouse 0014)


async def recorded_zones(ch: AsyncClient, guilds: list[int] | None = None) -> dict[int, Recorded]:
    """The recorded zone of these servers (every server with a zone row when None); a server
    without one is in DEFAULT_ZONE, with no other zone's rows and its voice weeks complete."""
    where = "" if guilds is None else "WHERE guild_id IN {guilds:Array(UInt64)}"
    result = await ch.query(
        "SELECT guild_id, argMax(tz, version), argMax(others_deleted, version),"
        f" argMax(voice, version) FROM message_local_weeks_zone {where} GROUP BY guild_id",
        parameters={"guilds": guilds or []},
    )
    return {
        int(g): Recorded(str(tz), bool(clean), bool(voice))
        for g, tz, clean, voice in result.result_rows
    }


async def _valid(ch: AsyncClient, tz: str) -> bool:
    """Both the analytics (which check the zone they are asked for with zoneinfo) and this
    ClickHouse know the zone: a zone newer than either's time zone data would fail the rebuild
    on every run, or leave weeks no query could ask for."""
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError):  # KeyError: ZoneInfoNotFoundError
        return False
    known = await ch.command(
        "SELECT count() FROM system.time_zones WHERE time_zone = {tz:String}",
        parameters={"tz": tz},
    )
    return bool(known)


async def follow_zones(pg: asyncpg.Connection, ch: AsyncClient) -> int:
    """Rebuild every server whose recorded zone differs from its Postgres setting, finish any
    rebuild left half done; returns how many servers were rebuilt."""
    # Servers in the default zone are only read when a zone row says otherwise: most are.
    wanted = {
        int(r["guild_id"]): str(r["timezone"])
        for r in await pg.fetch(
            "SELECT guild_id, timezone FROM guilds WHERE timezone <> $1", DEFAULT_ZONE
        )
    }
    # A deleted server (tombstone not resumed) keeps its guilds row; its deletion request
    # removes its zone row: none is written again, nor its rows moved meanwhile.
    deleted = {
        int(r["guild_id"])
        for r in await pg.fetch("SELECT guild_id FROM guild_tombstones WHERE resumed_at IS NULL")
    }
    recorded = await recorded_zones(ch)
    rebuilt = 0
    for guild in sorted((wanted.keys() | recorded.keys()) - deleted):
        tz = wanted.get(guild, DEFAULT_ZONE)
        now = recorded.get(guild, Recorded(DEFAULT_ZONE, others_deleted=True, voice=True))
        if now.tz != tz:
            if await _valid(ch, tz):
                await _rebuild(ch, guild, tz, now)
                rebuilt += 1
                continue
            log.warning(
                "guild %s: time zone %r in Postgres is not a zone both Python and ClickHouse"
                " know; its local weeks stay in %s",
                guild,
                tz,
                now.tz,
            )
        if not now.others_deleted:
            await _delete_other_zones(ch, guild, now.tz, now.voice)
    return rebuilt


async def _rebuild(ch: AsyncClient, guild: int, tz: str, now: Recorded) -> None:
    """Move a server's local weeks to zone ``tz`` (steps 1-3 of the module docstring)."""
    if now.others_deleted:
        await _record(ch, guild, now.tz, others_deleted=False, voice=now.voice)
    parameters = {"guild": guild, "tz": tz, "version": time.time_ns() // 1_000_000}
    await ch.command(
        f"""
        INSERT INTO message_local_weeks (guild_id, tz, author_id, weeks, version)
        SELECT guild_id, {{tz:String}}, author_id, {local_mondays("first_at", "last_at")},
               {{version:UInt64}}
        FROM message_activity_weeks_by_author FINAL
        WHERE guild_id = {{guild:UInt64}}
        """,
        parameters=parameters,
    )
    await ch.command(
        f"""
        INSERT INTO voice_local_weeks (guild_id, tz, user_id, weeks, version)
        SELECT guild_id, {{tz:String}}, user_id, {_voice_mondays()}, {{version:UInt64}}
        FROM voice_starts_by_member FINAL
        WHERE guild_id = {{guild:UInt64}}
        """,
        parameters=parameters,
    )
    await _record(ch, guild, tz, others_deleted=False, voice=True)


async def _delete_other_zones(ch: AsyncClient, guild: int, tz: str, voice: bool) -> None:
    # Lightweight DELETE, as deletion requests use (privacy.ch_delete): masked at once, FINAL
    # reads honour it, and lightweight_deletes_sync (default) waits for it, so the zone row is
    # marked clean only once the rows are gone.
    for table in _ZONED_TABLES:
        await ch.command(
            f"DELETE FROM {table} WHERE guild_id = {{guild:UInt64}} AND tz != {{tz:String}}",
            parameters={"guild": guild, "tz": tz},
        )
    await _record(ch, guild, tz, others_deleted=True, voice=voice)


async def _record(
    ch: AsyncClient, guild: int, tz: str, *, others_deleted: bool, voice: bool
) -> None:
    # Nanoseconds: the steps of one rebuild write this row several times within a millisecond.
    await ch.command(
        "INSERT INTO message_local_weeks_zone (guild_id, tz, others_deleted, voice, version)"
        " SELECT {guild:UInt64}, {tz:String}, {clean:Bool}, {voice:Bool}, {version:UInt64}",
        parameters={
            "guild": guild,
            "tz": tz,
            "clean": others_deleted,
            "voice": voice,
            "version": time.time_ns(),
        },
    )
