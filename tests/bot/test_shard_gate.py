"""What a standby shard holds for the cut-over, and for how long (herwa.bot.shard_gate): events
received the hold horizon before the cut-over began are dropped, the rest replayed from the
previous fleet's anchor on."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from herwa.bot.app import BotApp
from herwa.bot.client import CaptureClient, Parser
from herwa.bot.directory import Directory
from herwa.bot.event_order import ANCHOR_MARGIN_S, Anchor, fingerprint, received
from herwa.bot.guild_settings import GuildConfig
from herwa.bot.shard_gate import ANCHOR_WAIT_S, ShardGate
from herwa.bot.voice import VoiceTracker
from herwa.config import BotSettings, DiscordSettings
from herwa.discord_api import point_discord_at, restore_discord_defaults
from herwa.json_types import Json
from herwa.simulator import Simulator

GUILD = 81_000_000_000_000_000
OTHER = 82_000_000_000_000_000
START = 1_000_000.0  # the standby session's READY, on the test's clock


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(START)
    monkeypatch.setattr("herwa.bot.shard_gate.time.time", c)
    return c


@dataclass
class Runner:
    """A shard runner as the gate sees it: its state is 'loaded' by counting."""

    shard_id: int = 0
    client: CaptureClient | None = None
    guilds: set[int] = field(default_factory=set)
    loads: int = 0

    @property
    def connected(self) -> bool:
        return True

    async def load_state(self) -> Json | None:
        self.loads += 1
        return None


@dataclass
class Fleet:
    directory: Directory
    voice: VoiceTracker
    count: int = 1  # every guild on shard 0
    previous: int | None = 2


Recorded = list[tuple[str, int, float]]  # (event, n, receive time the parser saw)


class Shard:
    """A standby shard's gate with a recording parser behind every event type."""

    def __init__(self, clock: Clock) -> None:
        directory = Directory(GuildConfig())
        self.clock = clock
        self.runner = Runner()
        self.gate = ShardGate(
            Fleet(directory, VoiceTracker(directory, 24)), self.runner, standby=True
        )
        self.recorded: Recorded = []
        self._parsers: dict[str, Parser] = {}
        self.send("READY", {"guilds": []})

    def _parser(self, event: str) -> Parser:
        if event not in self._parsers:

            def parse(d: Json) -> None:
                if event != "READY":
                    self.recorded.append((event, d["n"], received()))

            self._parsers[event] = self.gate.wrap(event, parse)
        return self._parsers[event]

    def send(self, event: str, d: Json) -> None:
        self._parser(event)(d)

    def at(self, when: float, event: str, n: int, guild: int = GUILD) -> Json:
        """Receive ``event`` number ``n`` of ``guild`` at ``when``; its payload."""
        self.clock.now = when
        d: Json = {"guild_id": str(guild), "n": n}
        self.send(event, d)
        return d

    def held(self, guild: int = GUILD) -> list[int]:
        return [e.d["n"] for e in self.gate.held.get(guild, ())]


def metric(name: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(name, {"outcome": outcome}) or 0.0


def trimmed() -> float:
    return metric("herwa_bot_reshard_events_total", "trimmed")


async def test_standby_gate_drops_events_held_too_long_and_keeps_the_rest_in_order(
    clock: Clock,
) -> None:
    shard = Shard(clock)
    before = trimmed()
    shard.at(START + 10, "MESSAGE_CREATE", 1)
    shard.at(START + 20, "VOICE_STATE_UPDATE", 2)
    shard.at(START + 30, "MESSAGE_CREATE", 3, guild=OTHER)
    shard.at(START + 100, "MESSAGE_CREATE", 4)
    shard.at(START + 200, "VOICE_STATE_UPDATE", 5)
    shard.at(START + 210, "GUILD_MEMBER_ADD", 6, guild=OTHER)
    assert shard.recorded == []  # a standby shard records nothing
    assert shard.gate.holding == 6

    shard.gate.trim(START + 50)

    assert shard.held() == [4, 5]
    assert shard.held(OTHER) == [6]
    assert shard.gate.holding == 3
    assert trimmed() - before == 3
    # Cheap to repeat: nothing more is that old.
    shard.gate.trim(START + 50)
    assert trimmed() - before == 3
    # A guild with nothing left held is forgotten, not kept as an empty list.
    shard.gate.trim(START + 205)
    assert list(shard.gate.held) == [OTHER]

    await shard.gate.activate({}, {})
    assert shard.runner.loads == 1  # the old fleet's final state, then the replay
    # What was left is recorded with the times it was received, in order.
    assert shard.recorded == [("GUILD_MEMBER_ADD", 6, START + 210)]


async def test_nothing_is_trimmed_once_the_shard_takes_over(clock: Clock) -> None:
    shard = Shard(clock)
    shard.at(START + 10, "VOICE_STATE_UPDATE", 1)
    shard.at(START + 20, "MESSAGE_CREATE", 2)
    shard.gate.trim(START + 15)
    assert shard.held() == [2]
    anchor = Anchor([fingerprint("GUILD_MEMBER_ADD", {"x": 1})], START + 19)
    await shard.gate.activate({GUILD: anchor}, {})
    # The anchor is not among what was held (nor older than it): the guild waits for it.
    assert GUILD in shard.gate.waiting
    shard.at(START + 30, "MESSAGE_CREATE", 3)
    before = trimmed()
    shard.gate.trim(START + 1000)
    assert shard.held() == [2, 3]
    assert trimmed() == before


async def test_anchor_older_than_everything_held_replays_it_all_at_once(clock: Clock) -> None:
    shard = Shard(clock)
    old = shard.at(START + 10, "VOICE_STATE_UPDATE", 1)  # the old fleet's last ordered event
    shard.at(START + 400, "MESSAGE_CREATE", 2)
    shard.at(START + 500, "VOICE_STATE_UPDATE", 3)
    shard.gate.trim(START + 300)
    assert shard.held() == [2, 3]
    before = metric("herwa_bot_reshard_anchors_total", "before_session")
    # Received after the session began, so only the trimming tells it lies before all held.
    anchor = Anchor([fingerprint("VOICE_STATE_UPDATE", old)], START + 10)
    assert anchor.at > START - ANCHOR_MARGIN_S

    await shard.gate.activate({GUILD: anchor}, {})

    assert shard.gate.waiting == {}
    assert shard.gate.activated
    assert shard.recorded == [
        ("MESSAGE_CREATE", 2, START + 400),
        ("VOICE_STATE_UPDATE", 3, START + 500),
    ]
    assert metric("herwa_bot_reshard_anchors_total", "before_session") - before == 1
    # Live from now on: no wait of ANCHOR_WAIT_S for an anchor that cannot come.
    clock.now = START + 600
    shard.send("MESSAGE_CREATE", {"guild_id": str(GUILD), "n": 4})
    assert shard.recorded[-1] == ("MESSAGE_CREATE", 4, START + 600)


async def test_anchor_within_the_window_is_found_and_messages_all_replayed(clock: Clock) -> None:
    shard = Shard(clock)
    v1 = shard.at(START + 10, "VOICE_STATE_UPDATE", 1)
    shard.at(START + 20, "MESSAGE_CREATE", 2)
    v3 = shard.at(START + 400, "VOICE_STATE_UPDATE", 3)
    shard.at(START + 410, "MESSAGE_CREATE", 4)
    v5 = shard.at(START + 420, "GUILD_MEMBER_ADD", 5)
    shard.at(START + 430, "VOICE_STATE_UPDATE", 6)
    shard.at(START + 440, "MESSAGE_UPDATE", 7)
    shard.gate.trim(START + 300)
    assert shard.held() == [3, 4, 5, 6, 7]
    found = metric("herwa_bot_reshard_anchors_total", "found")
    # The old fleet recorded up to 5; the first of its tail was dropped for its age.
    tail = [
        fingerprint("VOICE_STATE_UPDATE", v1),
        fingerprint("VOICE_STATE_UPDATE", v3),
        fingerprint("GUILD_MEMBER_ADD", v5),
    ]

    await shard.gate.activate({GUILD: Anchor(tail, START + 420)}, {})

    assert shard.gate.waiting == {}
    assert metric("herwa_bot_reshard_anchors_total", "found") - found == 1
    assert shard.recorded == [
        ("MESSAGE_CREATE", 4, START + 410),
        ("VOICE_STATE_UPDATE", 6, START + 430),
        ("MESSAGE_UPDATE", 7, START + 440),
    ]


def test_hold_horizon_is_well_above_what_the_anchors_are_waited_for() -> None:
    assert BotSettings().reshard_hold_seconds == 600
    with pytest.raises(ValueError, match="reshard_hold_seconds"):
        BotSettings(reshard_hold_seconds=59)
    shortest = BotSettings(reshard_hold_seconds=60).reshard_hold_seconds
    assert shortest >= 4 * ANCHOR_WAIT_S
    assert shortest >= 12 * ANCHOR_MARGIN_S


# -- the pod: when it stops trimming -------------------------------------------------------


async def test_standby_pod_trims_by_its_horizon_until_it_reads_the_cut_over(
    stores: tuple[asyncpg.Pool, Redis], sim: Simulator, clock: Clock
) -> None:
    pool, redis = stores
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO bot_fleet (recording, target, phase) VALUES (4, 8, 'standby')"
        )
    point_discord_at(sim.api_base)  # the session-start budget is asked of the simulator
    try:
        app = BotApp(
            settings=BotSettings(reshard_hold_seconds=60),
            discord_settings=DiscordSettings(),
            pool=pool,
            redis=redis,
            prefix="t:",
            pod="bot-0",
            token=sim.config.token,
            shard_count=8,
            max_concurrency=1,
        )
        fleet = app.fleet
        await fleet.refresh()
    finally:
        restore_discord_defaults()
    assert fleet.role == "standby"
    assert fleet.standby_seen_at == START
    recorded: list[int] = []
    parsers: dict[str, Parser] = {
        "READY": lambda d: None,
        "MESSAGE_CREATE": lambda d: recorded.append(d["n"]),
    }
    gated, _ = fleet.gate(Runner(), parsers, {})
    gate = fleet.gates[0]
    gated["READY"]({"guilds": []})
    for n, offset in enumerate((10.0, 80.0, 100.0)):
        clock.now = START + offset
        gated["MESSAGE_CREATE"]({"guild_id": str(GUILD), "n": n})

    clock.now = START + 130
    await fleet.refresh()
    fleet.tick()
    # Dropped: what it received 60 s before it last read that the fleet was still on standby.
    assert [e.d["n"] for e in gate.held[GUILD]] == [1, 2]
    assert REGISTRY.get_sample_value("herwa_bot_reshard_held_events") == 2

    async with pool.acquire() as conn:
        await conn.execute("UPDATE bot_fleet SET phase = 'cutover', cutover_at = now()")
    clock.now = START + 10_000
    await fleet.refresh()
    fleet.tick()
    assert fleet.role == "standby"
    assert fleet.standby_seen_at == START + 130
    assert [e.d["n"] for e in gate.held[GUILD]] == [1, 2]
    assert recorded == []
