"""A bot pod SIGKILLed and replaced only after Discord's resume window has passed.

Its shards' sessions are gone, so the replacement's RESUME from the committed marks is refused
(INVALID_SESSION) and every shard IDENTIFYs — counted as such in its metrics, with no resume.
What the gateway delivered in between is lost to it; what backfill can read back is not:

- every message posted while no one read the shard is stored (backfill from the newest stored
  message of each channel);
- open voice sessions are reconciled against GUILD_CREATE's ``voice_states``: a session still
  open in ``bot_voice_open`` whose user is gone is closed (``reconcile``) at the shard's last
  committed mark, one in voice without a session is opened at the GUILD_CREATE. With
  ``bot_voice_open`` emptied by hand, a user still in voice is counted from the GUILD_CREATE, and
  a session that began before the crash and ended during it is lost (nothing records it).

Redis is emptied during the outage in both cases: it holds leases only, nothing of this.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from herwa.devstack import DevStack, Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import SHARDS, Fleet, pg, split_names, wait_for
from tests.bot.expect import VOICE_BOUNDARY_S, VOICE_SLACK_S, actual_messages, expected_messages
from tests.bot.gateway_sessions import gateway_sessions, opened_by

pytestmark = pytest.mark.slow

# Discord keeps a disconnected session resumable for this long (the simulator's window).
RESUME_WINDOW_S = 1.0


@pytest.fixture
async def short_window_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=8,
        seed=43,
        history_rate=(50, 0.2),
        gateway=GatewayConfig(
            identify_window_s=0.25, heartbeat_interval_ms=5_000, resume_timeout_s=RESUME_WINDOW_S
        ),
    )
    async with Simulator(config) as s:
        yield s


@pytest.mark.parametrize("voice_state", ["kept", "emptied"])
async def test_resume_window_passed_identifies_backfills_and_reconciles_voice(
    short_window_sim: Simulator,
    own_redis: tuple[DevStack, Endpoints],
    tmp_path: Path,
    voice_state: str,
) -> None:
    sim = short_window_sim
    _, ep = own_redis
    dsn = ep.postgres_dsn
    fleet = Fleet(sim, ep, tmp_path)
    try:
        # One pod: no survivor takes its shards over while it is down.
        (name,) = split_names(1)
        await fleet.start(name)
        await wait_for(fleet.all_connected, 30, "the bot connected")
        held = set(range(SHARDS))
        guilds = sorted(sim.world.guilds)
        guild = sim.world.guilds[guilds[0]]
        humans = [u for u, m in guild.members.items() if not m.user.bot and u not in guild.voice]
        stay, leaver, joiner = humans[:3]
        channel = guild.voice_channels()[0].id
        act = sim.activity

        voice_from = sim.now_ms()
        act.voice_join(guild.id, stay, channel, at_ms=voice_from)
        act.voice_join(guild.id, leaver, channel, at_ms=voice_from)

        async def committed_open() -> bool:
            return await _open_sessions(dsn, guild.id) == {stay, leaver}

        await wait_for(committed_open, 15, "both voice sessions committed as open")
        fleet.bots[name].signal(signal.SIGKILL)
        assert await fleet.bots[name].wait_exit(5) == -signal.SIGKILL

        # While no one reads the shards: a voice session ends, one begins, messages are posted.
        act.voice_leave(guild.id, leaver, at_ms=sim.now_ms())
        act.voice_join(guild.id, joiner, channel, at_ms=sim.now_ms())
        posted = 0
        for gid in guilds:
            g = sim.world.guilds[gid]
            author = next(u for u, m in g.members.items() if not m.user.bot)
            for ch in g.text_channels():
                act.post_message(gid, ch.id, author, at_ms=sim.now_ms())
                posted += 1

        async def sessions_expired() -> bool:
            return not sim.sessions()

        await wait_for(sessions_expired, 10, "Discord to drop the dead pod's sessions")
        redis = Redis.from_url(ep.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        if voice_state == "emptied":
            await pg(dsn, "DELETE FROM bot_voice_open WHERE guild_id = $1", guild.id)

        await fleet.start(name)
        await wait_for(fleet.all_connected, 30, "the bot connected again")
        # Every voice boundary the replacement could not read as it happened lies in here.
        outage_s = (sim.now_ms() - voice_from) / 1000
        sessions = gateway_sessions(await fleet.bots[name].metrics())
        assert opened_by(sessions, held, "identify") == dict.fromkeys(sorted(held), 1)
        assert opened_by(sessions, held, "resume") == dict.fromkeys(sorted(held), 0)

        async def messages_complete() -> bool:
            return expected_messages(sim) == await actual_messages(dsn)

        await wait_for(messages_complete, 60, "backfill to store every message", interval=0.25)

        sim.end_voice_sessions()
        ledger = {
            v.user_id: v.seconds
            for v in sim.ledger.voice_sessions
            if v.guild_id == guild.id and v.user_id in (stay, leaver, joiner)
        }
        expected_users = {stay, joiner} if voice_state == "emptied" else {stay, leaver, joiner}

        async def voice_closed() -> bool:
            return set(await _closed_sessions(dsn, guild.id)) == expected_users

        await wait_for(voice_closed, 30, f"voice sessions of {sorted(expected_users)} closed")
        closed = await _closed_sessions(dsn, guild.id)
        assert all(len(rows) == 1 for rows in closed.values()), closed
        got = {user: rows[0][0] for user, rows in closed.items()}
        reasons = {user: rows[0][1] for user, rows in closed.items()}
        exact = VOICE_SLACK_S + 2 * VOICE_BOUNDARY_S
        if voice_state == "kept":
            # Continued from bot_voice_open: counted from its real join, closed at the leave.
            assert abs(got[stay] - ledger[stay]) <= exact, (got, ledger)
            assert reasons[leaver] == "reconcile"
            # Closed at the last committed mark, before the real leave, within the outage.
            assert ledger[leaver] - outage_s - exact <= got[leaver] <= ledger[leaver] + exact
        else:
            # Opened at the GUILD_CREATE that found it in voice: short by at most the outage.
            assert ledger[stay] - outage_s - exact <= got[stay] <= ledger[stay] + exact
        assert ledger[joiner] - outage_s - exact <= got[joiner] <= ledger[joiner] + exact
        print(
            f"resume window passed ({voice_state}): identified {sorted(held)}, "
            f"{posted} messages backfilled, outage {outage_s:.2f}s, "
            f"voice seconds ledger={ledger} stored={got}"
        )
    finally:
        await fleet.stop()


async def _open_sessions(dsn: str, guild_id: int) -> set[int]:
    rows = await pg(dsn, "SELECT user_id FROM bot_voice_open WHERE guild_id = $1", guild_id)
    return {r["user_id"] for r in rows}


async def _closed_sessions(dsn: str, guild_id: int) -> dict[int, list[tuple[float, str]]]:
    rows = await pg(
        dsn,
        "SELECT user_id, duration_seconds, close_reason FROM voice_sessions "
        "WHERE guild_id = $1 ORDER BY joined_at",
        guild_id,
    )
    out: dict[int, list[tuple[float, str]]] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append((float(r["duration_seconds"]), r["close_reason"]))
    return out
