"""Blue/green resharding under traffic: 4 → 8 and 8 → 6 shards (herwa.bot.generations).

Real ``herwa bot`` processes of the old shard count record while ``herwa reshard`` names the new
count and pods of that count join on standby; once every new shard is connected the old fleet
hands over and the new one takes over. Sampled every 200 ms: no moment at which both fleets
record, and the old fleet lets go of its shards only while every new shard is connected. At
the end every family in Postgres equals the ledger (nothing lost, nothing twice, voice seconds
within the usual bound, presence transitions of the one guild whose subscription grants
them), the new fleet skipped what the old one had recorded, and the simulator refused no
IDENTIFY (max_concurrency per window) with one session start per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from herwa.devstack import Endpoints
from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig
from tests.bot.conftest import ROOT, BotProcess, Fleet, pg, split_names, wait_for
from tests.bot.expect import settle
from tests.bot.fault_families import scenario
from tests.bot.test_presence import subscribe_presence

pytestmark = pytest.mark.slow

RATE = 150  # events/s


@pytest.fixture
async def reshard_sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        guilds=24,
        seed=29,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
        history_rate=(50, 0.2),
        scenario=scenario(29, presence=True),
    )
    async with Simulator(config) as s:
        yield s


class Generation:
    """The bot pods of one shard count."""

    def __init__(self, sim: Simulator, endpoints: Endpoints, log_dir: Path, shards: int) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.shards = shards
        env = {
            "HERWA_DISCORD_SHARD_COUNT": str(shards),
            # A long lease: with two fleets and the traffic on one busy machine, a pod opening
            # several shards in a row (each start waits for its login) must not outlive it (no
            # pod here dies without handing its shards over, so nothing waits for one to lapse).
            "HERWA_BOT_MEMBER_HEARTBEAT_SECONDS": "1.0",
            "HERWA_BOT_MEMBER_TTL_SECONDS": "30.0",
            # The simulator counts an IDENTIFY when its own loop reads it, and that loop shares
            # the machine with two fleets and the traffic: slots well apart (0.6 s against its
            # 0.25 s window), so the test asserts the bot's pacing rather than this machine's
            # scheduling (CI saw 110 ms of skew at FAST_ENV's spacing).
            "HERWA_BOT_IDENTIFY_WINDOW_SECONDS": "0.5",
            "HERWA_BOT_PRESENCE_CAPTURE": "true",
        }
        self.fleet = Fleet(sim, endpoints, log_dir, env)

    async def start(self, pods: int) -> None:
        await asyncio.gather(*(self._start(n) for n in split_names(pods, self.shards)))

    async def _start(self, name: str) -> None:
        # Started while the other fleet and the traffic keep the machine busy: a process may
        # take longer than the usual 30 s to import and report its port.
        bot = BotProcess(name, self.fleet.env(name), self.fleet.log_dir)
        self.fleet.bots[name] = bot
        await bot.start(timeout=120)

    async def state(self) -> tuple[set[str], set[int]]:
        """The roles of the live pods, and the shards they have connected."""
        roles: set[str] = set()
        connected: set[int] = set()
        for s in (await self.fleet.status()).values():
            roles.add(s["fleet"]["role"])
            connected.update(s["shards_connected"])
        return roles, connected

    async def recording_all(self) -> bool:
        roles, connected = await self.state()
        return roles == {"recording"} and connected == set(range(self.shards))

    async def metric(self, name: str) -> float:
        total = 0.0
        for bot in self.fleet.bots.values():
            if not bot.alive:
                continue
            for line in (await bot.metrics()).splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    total += float(line.rsplit(" ", 1)[1])
        return total


class Watch:
    """Samples both fleets: never both recording; the old one lets go only of a fully
    connected new one."""

    def __init__(self, old: Generation, new: Generation) -> None:
        self.old, self.new = old, new
        self.both_recording: list[str] = []
        self.early_release: list[str] = []
        self.samples = 0

    async def run(self) -> None:
        while True:
            (old_roles, old_conn), (new_roles, new_conn) = await asyncio.gather(
                self.old.state(), self.new.state()
            )
            if old_conn and new_conn and "recording" in old_roles & new_roles:
                self.both_recording.append(f"old={old_roles} new={new_roles}")
            releasing = bool(old_roles & {"retiring", "idle"}) and old_conn != set(
                range(self.old.shards)
            )
            new_ready = new_conn == set(range(self.new.shards)) or "recording" in new_roles
            if releasing and not new_ready:
                self.early_release.append(f"old={sorted(old_conn)} new={sorted(new_conn)}")
            self.samples += 1
            await asyncio.sleep(0.2)


def reshard_cli(endpoints: Endpoints, shards: int) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
    env.update(endpoints.as_env())
    done = subprocess.run(
        [sys.executable, "-m", "herwa.cli", "reshard", "--shard-count", str(shards)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stderr.decode()  # what it did, as a log line


async def fleet_row(dsn: str) -> dict[str, Any]:
    rows = await pg(dsn, "SELECT recording, target, phase, previous FROM bot_fleet")
    return dict(rows[0])


async def reshard_under_traffic(
    sim: Simulator, endpoints: Endpoints, tmp_path: Path, old_count: int, new_count: int, pods: int
) -> None:
    dsn = endpoints.postgres_dsn
    # Presence is recorded in one guild (its subscription grants it): rows keyed by receive
    # time, held by the standby fleet and placed by the anchors like member leaves.
    guilds = sorted(sim.world.guilds)
    await subscribe_presence(dsn, guilds[0], guilds[1])
    old = Generation(sim, endpoints, tmp_path / f"s{old_count}", old_count)
    new = Generation(sim, endpoints, tmp_path / f"s{new_count}", new_count)

    async def diagnose() -> str:
        return "\n".join(f"{n}:\n{b.tail(25)}" for g in (old, new) for n, b in g.fleet.bots.items())

    watch = Watch(old, new)
    watcher: asyncio.Task[None] | None = None
    try:
        await old.start(pods)
        await wait_for(old.recording_all, 60, f"{old_count} shards recording")
        starts_before = sim.gateway.session_starts_used
        sim.start_activity(RATE)
        try:
            await asyncio.sleep(1.0)
            assert "standby" in reshard_cli(endpoints, new_count)
            watcher = asyncio.create_task(watch.run())
            started = time.monotonic()
            await new.start(pods)
            await wait_for(new.recording_all, 90, f"{new_count} shards recording")
            took = time.monotonic() - started
            assert await fleet_row(dsn) == {
                "recording": new_count,
                "target": new_count,
                "phase": "steady",
                "previous": old_count,
            }

            async def old_idle() -> bool:
                roles, connected = await old.state()
                return roles == {"idle"} and not connected

            await wait_for(old_idle, 10, f"the {old_count}-shard pods idle")
            await asyncio.sleep(1.0)
            for bot in old.fleet.bots.values():
                bot.signal(15)
            for bot in old.fleet.bots.values():
                assert await bot.wait_exit(30) == 0, bot.tail()
            await asyncio.sleep(1.0)
        finally:
            await sim.stop_activity()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        await settle(sim, dsn, content=False, timeout=30, diagnose=diagnose, presence={guilds[0]})
        presence = sum(sim.ledger.presence_rows({guilds[0]}).values())
        assert presence > 0  # the comparison above held rows, not two empty sets
        skipped = await new.metric('herwa_bot_reshard_events_total{outcome="skipped"}')
        found = await new.metric('herwa_bot_reshard_anchors_total{outcome="found"}')
        # The new fleet held events the old one had recorded, and left them out by the anchors.
        assert skipped > 0
        assert found > 0
        assert watch.samples > 20
        assert not watch.both_recording, watch.both_recording[:5]
        assert not watch.early_release, watch.early_release[:5]
        # The identify budget: no IDENTIFY refused for its bucket's window, one session start
        # per new shard (shards moved between pods RESUME), within the daily limit.
        assert not sim.ledger.identify_refused, dict(sim.ledger.identify_refused)
        assert sim.gateway.session_starts_used - starts_before == new_count
        assert sim.gateway.session_starts_used <= sim.gateway.config.session_start_total
        print(
            f"{old_count} -> {new_count} shards: new fleet recording {took:.1f}s after its pods "
            f"started; held events skipped={skipped:.0f} anchors found={found:.0f}; "
            f"samples={watch.samples} presence transitions={presence} "
            f"emitted={sum(sim.ledger.events_emitted.values())}"
        )
    finally:
        await asyncio.gather(new.fleet.stop(), old.fleet.stop())


async def test_reshard_4_to_8_under_traffic(
    reshard_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    await reshard_under_traffic(reshard_sim, migrated, tmp_path, 4, 8, pods=1)


async def test_reshard_8_to_6_under_traffic(
    reshard_sim: Simulator, migrated: Endpoints, tmp_path: Path
) -> None:
    await reshard_under_traffic(reshard_sim, migrated, tmp_path, 8, 6, pods=1)


async def test_reshard_waits_while_the_session_start_budget_is_short(
    migrated: Endpoints, tmp_path: Path
) -> None:
    # 4 session starts for the recording fleet leave 7 of 11: not enough for 8 new shards plus
    # one re-IDENTIFY of every recording shard. Opening them anyway would exhaust the daily
    # budget, after which Discord ends every session and resets the token.
    config = SimulatorConfig(
        guilds=8,
        seed=31,
        gateway=GatewayConfig(
            identify_window_s=0.25, heartbeat_interval_ms=5_000, session_start_total=11
        ),
    )
    async with Simulator(config) as sim:
        old = Generation(sim, migrated, tmp_path / "s4", 4)
        new = Generation(sim, migrated, tmp_path / "s8", 8)
        try:
            await old.start(1)
            await wait_for(old.recording_all, 60, "4 shards recording")
            reshard_cli(migrated, 8)
            await new.start(1)

            async def waiting() -> bool:
                roles, connected = await new.state()
                return roles == {"waiting"} and not connected

            await wait_for(waiting, 60, "the 8-shard pod waiting for session starts")
            await asyncio.sleep(2.0)
            assert await waiting()
            assert await old.recording_all()
            assert not [s for s in sim.sessions() if s.shard_count == 8]
            assert sim.gateway.session_starts_used == 4
            assert (await fleet_row(migrated.postgres_dsn))["phase"] == "standby"
        finally:
            await asyncio.gather(new.fleet.stop(), old.fleet.stop())


async def test_reshard_pods_started_before_the_target_is_set_stay_idle(
    migrated: Endpoints, tmp_path: Path
) -> None:
    # The chart's reshard Job runs alongside the StatefulSet's rollout, so a pod of the new
    # count may start before `herwa reshard` has made that count the target: it must open
    # nothing (its count is neither recording nor the target), not be Ready, and turn standby
    # once the target is set.
    config = SimulatorConfig(
        guilds=8,
        seed=37,
        gateway=GatewayConfig(identify_window_s=0.25, heartbeat_interval_ms=5_000),
    )
    async with Simulator(config) as sim:
        old = Generation(sim, migrated, tmp_path / "s4", 4)
        new = Generation(sim, migrated, tmp_path / "s8", 8)
        try:
            await old.start(1)
            await wait_for(old.recording_all, 60, "4 shards recording")
            await new.start(1)

            async def idle() -> bool:
                roles, connected = await new.state()
                return roles == {"idle"} and not connected

            await wait_for(idle, 60, "the 8-shard pod idle before the target is set")
            await asyncio.sleep(2.0)  # two more fleet checks (heartbeat 1 s)
            assert await idle()
            (status,) = (await new.fleet.status()).values()
            assert status["ready"] is False  # the rollout waits for it
            assert status["shards_desired"] == []
            assert status["shards_owned"] == []
            assert not [s for s in sim.sessions() if s.shard_count == 8]
            assert await old.recording_all()
            assert (await fleet_row(migrated.postgres_dsn))["phase"] == "steady"

            assert "standby" in reshard_cli(migrated, 8)
            await wait_for(new.recording_all, 90, "8 shards recording")
            assert await fleet_row(migrated.postgres_dsn) == {
                "recording": 8,
                "target": 8,
                "phase": "steady",
                "previous": 4,
            }
            assert sim.gateway.session_starts_used == 4 + 8
        finally:
            await asyncio.gather(new.fleet.stop(), old.fleet.stop())
