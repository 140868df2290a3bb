"""Fault tests: a bot SIGKILLed (counts complete again after backfill), Redis restarted (the
bot recovers); Postgres stopped mid-stream is test_fault_postgres_down.py (30 s, every family).
SIGTERM mid-stream is covered by test_scaling (the shrink is a SIGTERM, exit 0, then exact
ledger equality)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herwa.devstack import DevStack, Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.expect import actual_messages, expected_messages

pytestmark = pytest.mark.slow


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text page; 0 when absent."""
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def rss_kb(pid: int) -> int:
    """The process's resident memory in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _missing_report(sim: Simulator, dsn: str) -> str:
    ids = {r["message_id"] for r in await pg(dsn, "SELECT message_id FROM message_events")}
    deliv: dict[int, list[object]] = {}
    for d in sim.ledger.deliveries:
        if d.event == "MESSAGE_CREATE":
            deliv.setdefault(d.key, []).append((d.shard_id, d.seq, d.connected, d.session_id[:6]))
    out = []
    for m in sim.ledger.messages.values():
        if not m.is_bot and m.id not in ids:
            out.append(f"{m.id} ms={m.created_ms % 100000} {deliv.get(m.id)}")
    return "\n".join(out[:40])


@pytest.fixture
async def short_resume_sim() -> AsyncIterator[Simulator]:
    """Sessions of a dead connection expire after 0.5 s: a killed bot's shards must IDENTIFY
    again, and what happened meanwhile is reachable only through channel history."""
    config = SimulatorConfig(
        guilds=8,
        seed=12,
        history_rate=(50, 0.2),
        gateway=GatewayConfig(
            identify_window_s=0.25, heartbeat_interval_ms=5_000, resume_timeout_s=0.5
        ),
    )
    async with Simulator(config) as s:
        yield s


async def test_fault_sigkill_past_resume_window_backfills_messages(
    short_resume_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    sim = short_resume_sim
    fleet = Fleet(sim, migrated, tmp_path)
    dsn = migrated.postgres_dsn
    try:
        a, b = split_names(2)
        await fleet.start(a)
        await fleet.start(b)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        sim.start_activity(400)
        await asyncio.sleep(1.5)
        kill_ms = sim.now_ms()
        fleet.bots[b].signal(signal.SIGKILL)
        await fleet.bots[b].wait_exit(5)
        # Messages keep coming while b's shards have no session at all.
        await asyncio.sleep(1.5)
        await sim.stop_activity()
        sim.step(300, family="message")
        assert sim.ledger.undelivered, "the outage should have left events undelivered"
        await fleet.start(b)  # restart under the same identity
        await wait_for(fleet.all_connected, 30, "both bots connected again")
        sim.step(200, family="message")
        # Messages created and deleted during the outage are invisible to any backfill, so
        # compare the messages that still exist.
        exp = expected_messages(sim, content=False, deleted=False)

        async def complete() -> bool:
            act = await actual_messages(dsn)
            return not (exp - act)

        try:
            await wait_for(complete, 30, "message counts complete after backfill", interval=0.25)
        except AssertionError:
            act = await actual_messages(dsn)
            for bot in fleet.bots.values():
                print(
                    bot.name,
                    [
                        ln
                        for ln in (await bot.metrics()).splitlines()
                        if "backfill" in ln or "rows_flushed_total" in ln
                    ],
                )
            ids = {r["message_id"] for r in await pg(dsn, "SELECT message_id FROM message_events")}
            deliv = {d.key: d for d in sim.ledger.deliveries if d.event == "MESSAGE_CREATE"}
            for m in sim.ledger.messages.values():
                if not m.is_bot and not m.deleted and m.id not in ids:
                    print(
                        "MISSING",
                        m.id,
                        m.channel_id,
                        m.thread_parent_id,
                        m.created_ms - kill_ms,
                        deliv.get(m.id),
                    )
            raise AssertionError(f"missing {exp - act}") from None
        backfilled = await pg(
            dsn, "SELECT count(*) AS n FROM message_events WHERE source = 'backfill'"
        )
        assert backfilled[0]["n"] > 0
        print(
            f"undelivered during outage={len(sim.ledger.undelivered)} "
            f"backfilled rows={backfilled[0]['n']}"
        )
    finally:
        await fleet.stop()


async def test_redis_restart_the_bot_recovers(
    sim: Simulator, own_redis: tuple[DevStack, Endpoints], tmp_path: Path
) -> None:
    stack, ep = own_redis
    fleet = Fleet(sim, ep, tmp_path)
    try:
        for n in split_names(2):
            await fleet.start(n)
        await wait_for(fleet.all_connected, 30, "two bots connected")
        sim.start_activity(300)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.down)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(stack.up)
        took = await wait_for(fleet.all_connected, 30, "every shard connected again")
        assert all(b.alive for b in fleet.bots.values())
        await asyncio.sleep(1.0)
        await sim.stop_activity()
        sim.step(200, family="message")
        # Messages are complete (gateway, RESUME replay or backfill); nothing dropped.
        exp = expected_messages(sim, content=False, deleted=False)

        async def complete() -> bool:
            return not (exp - await actual_messages(ep.postgres_dsn))

        await wait_for(complete, 30, "message counts complete after the Redis restart")
        for b in fleet.bots.values():
            assert 'herwa_bot_rows_dropped_total{table="message_events"} 0.0' in await b.metrics()
        print(f"all shards connected {took:.1f}s after Redis came back")
    finally:
        with contextlib.suppress(Exception):
            await fleet.stop()
