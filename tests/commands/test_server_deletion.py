"""A deleted server stays deleted: neither live capture nor a later fresh connection's backfill
records it again, until an admin opts it back in through /privacy — and even then backfill
never reads back the history from before the opt-in.

Real ``herwa bot`` processes (discord.py over the simulator's gateway and REST), real stores."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from herwa.bot.sharding import assigned_shards
from herwa.bot.tombstones import Tombstones
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import SHARDS, Fleet, pg, split_names, wait_for
from tests.bot.expect import actual_messages, expected_messages
from tests.commands.conftest import opt, sub

pytestmark = pytest.mark.slow


def _by_guild(counts: Counter[tuple[int, str]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for (guild, _), n in counts.items():
        out[guild] += n
    return out


async def _messages_of(dsn: str, guild: int) -> int:
    rows = await pg(dsn, "SELECT count(*) AS n FROM message_events WHERE guild_id = $1", guild)
    return int(rows[0]["n"])


async def _others_complete(sim: Simulator, dsn: str, deleted: int) -> None:
    """Every other guild's messages are stored: capture and backfill have caught up."""

    async def complete() -> bool:
        expected = _by_guild(expected_messages(sim, content=False, deleted=False))
        actual = _by_guild(await actual_messages(dsn))
        return all(actual[g] >= n for g, n in expected.items() if g != deleted)

    await wait_for(complete, 60, "the other guilds' messages", interval=0.25)


async def _fresh_restart(fleet: Fleet, name: str) -> None:
    """SIGTERM, then start again once the simulator has dropped the old sessions: the bot must
    IDENTIFY afresh, which is when it backfills."""
    fleet.bots[name].signal(signal.SIGTERM)
    assert await fleet.bots[name].wait_exit(30) == 0

    async def sessions_dropped() -> bool:
        return not fleet.sim.sessions()

    # A bot started sooner would RESUME and receive the gap live, with no backfill at all.
    await wait_for(sessions_dropped, 30, "the simulator dropped the old sessions")
    fleet.sim.step(150, family="message")  # history the restarted bot can only backfill
    await fleet.start(name)
    await wait_for(fleet.all_connected, 60, "the bot connected again")


async def test_a_deleted_server_is_not_recorded_again_until_an_admin_opts_it_in(
    migrated: Endpoints, tmp_path: Path
) -> None:
    config = SimulatorConfig(
        guilds=4,
        seed=13,
        history_rate=(50, 0.2),
        gateway=GatewayConfig(
            identify_window_s=0.25, heartbeat_interval_ms=5_000, resume_timeout_s=0.5
        ),
    )
    dsn = migrated.postgres_dsn
    async with Simulator(config) as sim:
        fleet = Fleet(sim, migrated, tmp_path)
        try:
            guild = min(sim.world.guilds)
            owner = sim.world.guilds[guild].owner_id
            sim.step(200, family="message")  # history before the bot ever ran
            await fleet.start("bot-0")
            await wait_for(fleet.all_connected, 60, "the bot connected")
            await _others_complete(sim, dsn, deleted=0)
            assert await _messages_of(dsn, guild) > 0  # backfilled like every guild

            reply = await sim.invoke_command(
                guild, "privacy", sub("delete-server-data", opt("confirm", True)), timeout=30
            )
            assert "nothing more is recorded" in reply["original"]["content"]
            result = await run_once(dsn, migrated.clickhouse_url, None, RunOptions())
            assert result.outcome == "caught_up", result.error
            assert result.stats.deletions == 1
            assert await _messages_of(dsn, guild) == 0

            # Live traffic: the other guilds are recorded, the deleted one is not.
            sim.step(300, family="message")
            await _others_complete(sim, dsn, deleted=guild)
            assert await _messages_of(dsn, guild) == 0

            # A fresh connection backfills every guild but the deleted one.
            await _fresh_restart(fleet, "bot-0")
            await _others_complete(sim, dsn, deleted=guild)
            assert await _messages_of(dsn, guild) == 0

            # An admin opts the server back in: live messages count again ...
            reply = await sim.invoke_command(
                guild, "privacy", sub("server-opt-in"), user_id=owner, timeout=30
            )
            assert "recorded again" in reply["original"]["content"]
            rows = await pg(
                dsn, "SELECT resumed_at FROM guild_tombstones WHERE guild_id = $1", guild
            )
            resumed_at: datetime = rows[0]["resumed_at"]
            sim.step(300, family="message")
            await _others_complete(sim, dsn, deleted=guild)
            await wait_for(
                lambda: _has_messages(dsn, guild), 30, "live messages of the opted-in guild"
            )
            # ... and the next fresh connection's backfill reads nothing from before the opt-in.
            await _fresh_restart(fleet, "bot-0")
            await _others_complete(sim, dsn, deleted=guild)
            before = await pg(
                dsn,
                "SELECT count(*) AS n FROM message_events"
                " WHERE guild_id = $1 AND created_at < date_trunc('milliseconds', $2::timestamptz)",
                guild,
                resumed_at,
            )
            assert before[0]["n"] == 0

            # History after the opt-in is backfilled as usual (the other guilds' being complete
            # says nothing of this one's, whose backfill may still be under way).
            async def backfilled() -> bool:
                rows = await pg(
                    dsn,
                    "SELECT count(*) AS n FROM message_events"
                    " WHERE guild_id = $1 AND source = 'backfill'",
                    guild,
                )
                return bool(rows[0]["n"] > 0)

            await wait_for(backfilled, 30, "the opted-in guild's backfill")
            before = await pg(
                dsn,
                "SELECT count(*) AS n FROM message_events"
                " WHERE guild_id = $1 AND created_at < date_trunc('milliseconds', $2::timestamptz)",
                guild,
                resumed_at,
            )
            assert before[0]["n"] == 0
        finally:
            await fleet.stop()


async def _has_messages(dsn: str, guild: int) -> bool:
    return await _messages_of(dsn, guild) > 0


async def test_a_reload_read_before_a_deletion_does_not_undo_it(migrated: Endpoints) -> None:
    """The periodic reload races the command: its read, taken before the command's commit,
    must not drop the server the command has just tombstoned in this pod."""
    locker = await asyncpg.connect(migrated.postgres_dsn)
    reader = await asyncpg.connect(migrated.postgres_dsn)
    try:
        tombstones = Tombstones()
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE guild_tombstones IN ACCESS EXCLUSIVE MODE")
        reload = asyncio.create_task(tombstones.load(reader))
        await wait_for(
            lambda: _waiting_on_lock(locker), 10, "the reload's read waiting on the lock"
        )
        tombstones.deleted(42)  # the command, committed meanwhile
        await lock.rollback()
        await reload
        assert 42 in tombstones
    finally:
        await reader.close()
        await locker.close()


async def _waiting_on_lock(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    )
    return bool(waiting)


async def test_a_shard_taken_over_honours_a_deletion_answered_by_its_old_owner(
    migrated: Endpoints, tmp_path: Path
) -> None:
    config = SimulatorConfig(
        guilds=8,
        seed=11,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
    )
    dsn = migrated.postgres_dsn
    async with Simulator(config) as sim:
        fleet = Fleet(sim, migrated, tmp_path)
        try:
            old, new = split_names(2)
            await fleet.start(new)
            await fleet.start(old)
            await wait_for(fleet.all_connected, 60, "two bots connected")
            owned = assigned_shards([old, new], old, SHARDS)
            guild = min(g for g in sim.world.guilds if (g >> 22) % SHARDS in owned)
            # The old owner answered /privacy delete-server-data (as the command writes it).
            await pg(dsn, "INSERT INTO guild_tombstones (guild_id) VALUES ($1)", guild)
            fleet.bots[old].signal(signal.SIGTERM)
            assert await fleet.bots[old].wait_exit(30) == 0
            await wait_for(
                lambda: fleet.all_connected([new]), 60, "the shards taken over by the other bot"
            )
            before = await _messages_of(dsn, guild)
            sim.step(400, family="message")
            assert _by_guild(expected_messages(sim, content=False))[guild] > 0  # it had traffic
            await _others_complete(sim, dsn, deleted=guild)
            assert await _messages_of(dsn, guild) == before
        finally:
            await fleet.stop()
