"""Every event family against the simulator's ledger, for the fault tests (test_fault_*.py).

tests/bot/expect.py compares messages, edits, deletions, joins, leaves, reactions, voice sessions
and seconds, and presence transitions; this adds what a fault can also lose or double: the daily
member-count snapshots and the command usage (counted in Redis by the bot, drained into
``command_usage`` by the ETL's own drain), and voice seconds with a tolerance derived from a
pause in reading the gateway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Set
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from herwa import usage
from herwa.simulator import ScenarioConfig, Simulator
from tests.bot.conftest import pg, wait_for
from tests.bot.expect import (
    VOICE_BOUNDARY_S,
    VOICE_SLACK_S,
    actual_voice,
    compare_all,
)

REDIS_PREFIX = "herwa:"  # the bots' default key prefix

# The default scenario without its random slash commands: the fault tests invoke commands
# themselves, at known moments, with options the commands accept.
TRAFFIC = {
    "message": 0.82,
    "edit": 0.03,
    "delete": 0.02,
    "voice": 0.07,
    "member": 0.03,
    "thread": 0.01,
    "reaction": 0.04,
}


def scenario(seed: int, *, presence: bool = False) -> ScenarioConfig:
    """``presence``: presence updates too (transitions only, the scenario's default: a
    restarted pod has forgotten its members' last presence and records a repeat once)."""
    if not presence:
        return ScenarioConfig(seed=seed, families=dict(TRAFFIC))
    return ScenarioConfig(seed=seed, families={**TRAFFIC, "presence": 0.1})


async def snapshots_taken(sim: Simulator, dsn: str, timeout: float = 30) -> dict[int, int]:
    """Wait for today's member-count snapshot of every guild; returns guild → member count.

    Call it before any traffic: the counts are then the simulator's own, and exact.
    """
    guilds = set(sim.world.guilds)

    async def every_guild() -> bool:
        return set(await actual_snapshots(dsn)) >= guilds

    await wait_for(every_guild, timeout, "a member-count snapshot of every guild")
    return {g.id: len(g.members) for g in sim.world.guilds.values()}


async def actual_snapshots(dsn: str) -> dict[int, int]:
    rows = await pg(
        dsn,
        "SELECT guild_id, member_count FROM member_count_snapshots WHERE day = $1",
        datetime.now(UTC).date(),
    )
    return {r["guild_id"]: r["member_count"] for r in rows}


async def invoke(sim: Simulator, guilds: Iterable[int], timeout: float = 20) -> int:
    """``/usage`` once in each guild, as its owner; returns how many were answered.

    ``/usage`` is neither gated nor charged, so it runs in every guild without a subscription.
    """
    answered = 0
    for guild in guilds:
        reply = await sim.invoke_command(guild, "usage", timeout=timeout)
        answered += bool(reply.get("complete"))
    return answered


def expected_usage(sim: Simulator) -> Counter[int]:
    return +Counter({gid: sum(g.commands.values()) for gid, g in sim.ledger.guilds.items()})


async def actual_usage(redis_url: str, dsn: str) -> Counter[int]:
    """Drain the bots' usage counters the way the ETL does; guild → invocations staged."""
    redis = Redis.from_url(redis_url)
    conn = await asyncpg.connect(dsn)
    try:
        await usage.drain(redis, REDIS_PREFIX, conn)
        rows = await conn.fetch(
            "SELECT guild_id, sum(invocations)::bigint AS n FROM command_usage GROUP BY 1"
        )
    finally:
        await conn.close()
        await redis.aclose()
    return +Counter({r["guild_id"]: r["n"] for r in rows})


def voice_tolerance(sim: Simulator, paused: tuple[int, int] | None) -> dict[int, float]:
    """guild → allowed |voice seconds difference|.

    The bot stamps a voice boundary when it reads the event. Normally that is within 50 ms per
    boundary (plus 0.5 s per guild); a boundary emitted while the gateway was not being read
    (``paused``: simulator ms from the pause until every row had arrived) is read at the latest
    when the pause ends. A move closes one row and opens the next at the same receive time, so
    only joins and leaves shift the total.
    """
    out: dict[int, float] = {}
    for v in sim.ledger.voice_sessions:
        if v.leave_ms is None:
            continue
        allowed = out.get(v.guild_id, VOICE_SLACK_S) + VOICE_BOUNDARY_S * (2 + 2 * v.moves)
        if paused is not None:
            start, end = paused
            for at in (v.join_ms, v.leave_ms):
                if start <= at <= end:
                    allowed += (end - at) / 1000
        out[v.guild_id] = allowed
    return out


async def compare_every_family(
    sim: Simulator,
    dsn: str,
    redis_url: str,
    snapshots: dict[int, int],
    *,
    content: bool = False,
    paused: tuple[int, int] | None = None,
    presence: Set[int] = frozenset(),
) -> list[str]:
    """Differences from the ledger for every family; empty when they all agree.
    ``presence``: the guilds whose presence transitions the bots record."""
    problems = await compare_all(sim, dsn, content=content, voice_seconds=False, presence=presence)
    tolerance = voice_tolerance(sim, paused)
    expected_seconds: dict[int, float] = {}
    for v in sim.ledger.voice_sessions:
        if v.leave_ms is not None:
            expected_seconds[v.guild_id] = expected_seconds.get(v.guild_id, 0.0) + v.seconds
    got_seconds = await actual_voice(dsn)
    for gid, secs in expected_seconds.items():
        got = got_seconds.get(gid, 0.0)
        if abs(got - secs) > tolerance[gid]:
            problems.append(
                f"voice seconds guild {gid}: expected {secs:.3f} got {got:.3f}"
                f" (±{tolerance[gid]:.3f})"
            )
    got_snapshots = await actual_snapshots(dsn)
    if got_snapshots != snapshots:
        problems.append(f"snapshots: expected {snapshots} got {got_snapshots}")
    exp_usage, got_usage = expected_usage(sim), await actual_usage(redis_url, dsn)
    if exp_usage != got_usage:
        problems.append(f"command usage: expected {dict(exp_usage)} got {dict(got_usage)}")
    return problems


async def settle_every_family(
    sim: Simulator,
    dsn: str,
    redis_url: str,
    snapshots: dict[int, int],
    *,
    timeout: float = 60,
    paused_from: int | None = None,
    diagnose: Callable[[], Awaitable[str]] | None = None,
    presence: Set[int] = frozenset(),
) -> dict[str, int]:
    """End every voice session, wait until Postgres holds every family's rows, then compare
    every family; raises with the differences. ``paused_from``: simulator ms when the bots
    stopped reading the gateway (the pause ends when the counts are complete).

    Returns what was compared, for the test's printout."""
    sim.end_voice_sessions()
    problems: list[str] = []

    async def counts_complete() -> bool:
        nonlocal problems
        problems = await compare_all(
            sim, dsn, content=False, voice_seconds=False, presence=presence
        )
        return not problems

    try:
        await wait_for(counts_complete, timeout, "Postgres to equal the ledger", interval=0.25)
    except AssertionError:
        detail = "\n".join(problems)
        if diagnose is not None:
            detail += "\n" + await diagnose()
        raise AssertionError(detail) from None
    paused = None if paused_from is None else (paused_from, sim.now_ms())
    problems = await compare_every_family(
        sim, dsn, redis_url, snapshots, paused=paused, presence=presence
    )
    assert not problems, "\n".join(problems)
    led = sim.ledger
    return {
        "messages": sum(1 for m in led.messages.values() if not m.is_bot),
        "edits": sum(g.edits for g in led.guilds.values()),
        "deletions": sum(g.deletes for g in led.guilds.values()),
        "joins": sum(g.joins for g in led.guilds.values()),
        "leaves": sum(g.leaves for g in led.guilds.values()),
        "voice_sessions": sum(1 for v in led.voice_sessions if v.leave_ms is not None),
        "snapshots": len(snapshots),
        "commands": sum(expected_usage(sim).values()),
        "reactions": len(led.reactions),
        "presence": sim.ledger.presence_rows(presence).total(),
    }
