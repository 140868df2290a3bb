"""The showcase server: a large community with a daily and weekly rhythm in its time zone,
heavy-tailed activity per member and per channel, and newcomers who mostly drift away — the
same from the same seed, with ids that carry each message's time, and without changing the
other guilds of the world."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import Counter

from herwa.simulator import (
    DISCORD_EPOCH_MS,
    ShowcaseConfig,
    Simulator,
    SimulatorConfig,
    WorldConfig,
)

END = 1_764_547_200_000  # 2025-12-01T00:00:00Z, a Monday
DAY = 86_400_000
SHOWCASE = ShowcaseConfig(members=1500)


def _sim(seed: int = 5, showcase: ShowcaseConfig | None = SHOWCASE) -> Simulator:
    world = WorldConfig(guilds=12, showcase=showcase)
    return Simulator(SimulatorConfig(seed=seed, guilds=12, record_deliveries=False, world=world))


async def _past(seed: int = 5) -> Simulator:
    sim = _sim(seed)
    sim.create_history(days=14, messages_per_day=300, showcase_per_day=1500, end_ms=END)
    await sim.showcase_newcomers(days=42, joins_per_day=10, end_ms=END)
    return sim


def _local(sim: Simulator, at_ms: int) -> dt.datetime:
    assert sim.world.showcase is not None
    zone = zoneinfo.ZoneInfo(sim.world.showcase.timezone)
    return dt.datetime.fromtimestamp(at_ms / 1000, zone)


async def test_same_seed_same_showcase() -> None:
    a, b = await _past(), await _past()
    assert a.ledger.message_rows() == b.ledger.message_rows()
    assert [(e.user_id, e.at_ms) for e in a.ledger.member_events] == [
        (e.user_id, e.at_ms) for e in b.ledger.member_events
    ]


def test_the_other_guilds_are_what_the_seed_gives_without_it() -> None:
    def shape(sim: Simulator) -> list[tuple[str, str, int, list[int]]]:
        return [
            (g.name, g.timezone, len(g.members), sorted(g.channels))
            for g in sim.world.guilds.values()
            if g is not sim.world.showcase
        ]

    assert shape(_sim()) == shape(_sim(showcase=None))
    assert _sim(showcase=None).world.showcase is None


async def test_every_message_id_carries_its_time() -> None:
    # History (two streams in one time order) and newcomers (a stream of its own, in the past).
    sim = await _past()
    assert sim.ledger.messages
    messages = sim.ledger.messages.values()
    assert all((m.id >> 22) + DISCORD_EPOCH_MS == m.created_ms for m in messages)


async def test_daily_and_weekly_rhythm_and_heavy_tails() -> None:
    sim = await _past()
    showcase = sim.world.showcase
    assert showcase is not None
    assert len(showcase.members) > 1500
    mine = [m for m in sim.ledger.messages.values() if m.guild_id == showcase.id]
    hours: Counter[int] = Counter()
    weekdays: Counter[int] = Counter()
    for m in mine:
        local = _local(sim, m.created_ms)
        hours[local.hour] += 1
        weekdays[local.weekday()] += 1
    # Quiet at night, busiest in the evening; weekends busier than the working days.
    assert hours[4] * 8 < hours[20]
    assert min(weekdays[5], weekdays[6]) > max(weekdays[d] for d in range(4))
    channels = sorted(Counter(m.channel_id for m in mine).values(), reverse=True)
    assert channels[0] > 4 * channels[len(channels) // 2]
    authors = sorted(Counter(m.author_id for m in mine).values(), reverse=True)
    assert sum(authors[: len(authors) // 10]) > sum(authors) / 2


async def test_newcomers_fade_like_a_real_cohort() -> None:
    sim = await _past()
    showcase = sim.world.showcase
    assert showcase is not None
    joined = {e.user_id: e.at_ms for e in sim.ledger.member_events if e.guild_id == showcase.id}
    assert len(joined) == 420
    # Of the members who joined in the first two weeks: active within a week of joining, and
    # three to four weeks later.
    early = {u for u, at in joined.items() if at < END - 28 * DAY}
    first: set[int] = set()
    later: set[int] = set()
    for m in sim.ledger.messages.values():
        if m.author_id in early:
            since = m.created_ms - joined[m.author_id]
            if since < 7 * DAY:
                first.add(m.author_id)
            elif 21 * DAY <= since < 28 * DAY:
                later.add(m.author_id)
    assert 0.2 * len(early) < len(first) < 0.8 * len(early)  # lurkers never write
    assert 0 < len(later) < 0.7 * len(first)
