"""`/config` changes what a running `herwa bot` captures: the tracked-channel allow-list and the
hour of the daily member-count snapshot apply as soon as the command has answered."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from herwa import platform
from herwa.simulator import TEXT, Guild, Simulator
from tests.bot.conftest import Fleet, pg, wait_for
from tests.commands.conftest import opt, sub, text_of

pytestmark = pytest.mark.slow


async def _seed(fleet: Fleet) -> None:
    # No GuildSubscription anywhere: /config is part of the default tier.
    conn = await asyncpg.connect(fleet.endpoints.postgres_dsn)
    try:
        await platform.seed(conn, platform.load())
    finally:
        await conn.close()


def _human(guild: Guild) -> int:
    return next(m.user.id for m in guild.members.values() if not m.user.bot)


async def _staged(dsn: str, message_id: int) -> bool:
    return bool(await pg(dsn, "SELECT 1 FROM message_events WHERE message_id = $1", message_id))


async def test_tracked_channels_change_while_the_bot_runs(fleet: Fleet, sim: Simulator) -> None:
    # The smallest pool allowed: the settings listener's connection must not starve the rest.
    fleet.extra_env["HERWA_POSTGRES_POOL_MAX_SIZE"] = "1"
    await fleet.start("bot-0")
    await wait_for(fleet.all_connected, 30, "all shards connected")
    await _seed(fleet)
    dsn = fleet.endpoints.postgres_dsn
    guild = next(g for g in sim.world.guilds.values() if len(g.text_channels()) >= 2)
    tracked, untracked = (c.id for c in guild.text_channels()[:2])
    author = _human(guild)

    # Every channel is tracked at first.
    before = sim.activity.post_message(guild.id, untracked, author, at_ms=sim.now_ms())
    await wait_for(lambda: _staged(dsn, before), 20, "a message staged before the change")

    reply = await sim.invoke_command(
        guild.id, "config", sub("channels", opt("channels", f"<#{tracked}>")), timeout=20
    )
    assert text_of(reply) == f"Tracking 1 channel(s): <#{tracked}>"

    # Right after the answer: the untracked channel's message first, then the tracked one's. One
    # guild is one shard, whose events the bot handles in order, so once the second is staged
    # the first has been handled too.
    dropped = sim.activity.post_message(guild.id, untracked, author, at_ms=sim.now_ms())
    kept = sim.activity.post_message(guild.id, tracked, author, at_ms=sim.now_ms())
    await wait_for(lambda: _staged(dsn, kept), 20, "the tracked channel's message staged")
    assert not await _staged(dsn, dropped)

    # Back to every channel: the other channel is captured again.
    reply = await sim.invoke_command(guild.id, "config", sub("channels", opt("channels", "all")))
    assert text_of(reply) == "Every channel is tracked now."
    again = sim.activity.post_message(guild.id, untracked, author, at_ms=sim.now_ms())
    await wait_for(lambda: _staged(dsn, again), 20, "the re-tracked channel's message staged")


async def _snapshotted(dsn: str) -> set[int]:
    rows = await pg(dsn, "SELECT guild_id FROM member_count_snapshots")
    return {int(r["guild_id"]) for r in rows}


async def test_snapshot_hour_changes_while_the_bot_runs(sim: Simulator, fleet: Fleet) -> None:
    now = datetime.now(UTC)
    # The pod's hour lies ahead (except in the day's last hour, when no later hour exists).
    fleet.extra_env["HERWA_BOT_SNAPSHOT_HOUR_UTC"] = "23"
    await fleet.start("bot-0")
    await wait_for(fleet.all_connected, 30, "all shards connected")
    await _seed(fleet)
    dsn = fleet.endpoints.postgres_dsn
    guild = next(iter(sim.world.guilds.values()))
    channel = next(c.id for c in guild.channels.values() if c.type == TEXT)

    reply = await sim.invoke_command(
        guild.id, "config", sub("snapshot-hour", opt("hour", now.hour)), channel_id=channel
    )
    assert text_of(reply) == f"Daily snapshot at **{now.hour:02d}:00 UTC**."
    # The snapshotter checks every 2 s; the bot's periodic settings reload (every 30 s) is not
    # what brings the new hour in.
    await wait_for(lambda: _contains(dsn, guild.id), 10, "the snapshot at the configured hour")
    rows = await pg(
        dsn,
        "SELECT member_count, day FROM member_count_snapshots WHERE guild_id = $1",
        guild.id,
    )
    assert [(r["member_count"], r["day"]) for r in rows] == [(len(guild.members), now.date())]
    if now.hour < 23:
        assert await _snapshotted(dsn) == {guild.id}


async def _contains(dsn: str, guild_id: int) -> bool:
    return guild_id in await _snapshotted(dsn)
