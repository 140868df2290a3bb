"""One Discord shard's worth of guilds (2,500, the most Discord puts on a shard) spread over
the fleet's shards, with a day of history: two bot pods started together — shards are handed
between them by RESUME while their backfills run — must store every historical message and
snapshot every guild, and neither event loop may block long enough to miss its gateway
heartbeats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.expect import actual_messages, expected_messages

pytestmark = pytest.mark.slow

GUILDS = 2_500
# discord.py's warnings when the event loop has not run for seconds. Not its "Can't keep up,
# websocket is N s behind": that compares the ACK's arrival with the time its heartbeat thread
# last *finished* sending, and a busy loop reads the ACK before that thread gets the GIL back,
# so it reports exactly one heartbeat interval whatever the real round trip.
BLOCKED = ("heartbeat blocked", "stopped responding")


@pytest.fixture
async def shard_of_guilds() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=GUILDS,
        seed=53,
        history_rate=(5000, 1.0),
        record_deliveries=False,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=10_000),
    )
    async with Simulator(config) as s:
        s.create_history(days=1, messages_per_day=5_000)
        yield s


async def test_scale_one_shard_of_guilds_backfills_without_blocking(
    shard_of_guilds: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    sim = shard_of_guilds
    dsn = migrated.postgres_dsn
    # Messages older than the backfill window (24 h) are out of reach by design.
    fleet = Fleet(sim, migrated, tmp_path, {"HERWA_BOT_BACKFILL_WINDOW_HOURS": "26"})
    expected = expected_messages(sim, content=False)
    total = sum(expected.values())
    started = time.monotonic()
    try:
        a, b = split_names(2)
        await asyncio.gather(fleet.start(a), fleet.start(b))
        connected = await wait_for(fleet.all_connected, 60, "every shard connected")

        async def complete() -> bool:
            snapshots = await pg(
                dsn, "SELECT count(DISTINCT guild_id) AS n FROM member_count_snapshots"
            )
            return snapshots[0]["n"] == GUILDS and await actual_messages(dsn) == expected

        try:
            await wait_for(complete, 90, "every message backfilled, every guild snapshotted", 1.0)
        except AssertionError:
            stored = sum((await actual_messages(dsn)).values())
            pending = await pg(dsn, "SELECT count(*) AS n FROM bot_backfill_pending")
            snaps = await pg(
                dsn, "SELECT count(DISTINCT guild_id) AS n FROM member_count_snapshots"
            )
            raise AssertionError(
                f"stored {stored} of {total}; backfills pending {pending[0]['n']}; "
                f"snapshots {snaps[0]['n']} of {GUILDS}\n"
                + "\n".join(f"{n}:\n{bot.tail(30)}" for n, bot in fleet.bots.items())
            ) from None
        took = time.monotonic() - started
        for name, bot in fleet.bots.items():
            blocked = [ln for ln in bot.tail(100_000).splitlines() if any(w in ln for w in BLOCKED)]
            assert not blocked, f"{name} fell behind its gateway:\n" + "\n".join(blocked[:10])
        print(
            f"{GUILDS} guilds: every shard connected after {connected:.1f}s; "
            f"{total} messages backfilled and {GUILDS} snapshots after {took:.1f}s"
        )
    finally:
        await fleet.stop()
