"""Presence end to end: two `herwa bot` processes started with presence capture record the
transitions of the one guild whose subscription grants `presence` — equal to the simulator's
ledger in Postgres and, after the ETL, in ClickHouse — and nothing of the others (one with a
subscription without the feature, the rest on the default tier); `/online` answers from those
rows there and is denied elsewhere, naming the tier that unlocks it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from herwa import analytics, platform
from herwa.etl.runner import RunOptions, run_once
from herwa.simulator import Simulator
from herwa.stores import clickhouse_url_client
from tests.bot.conftest import Fleet, pg, split_names, wait_for
from tests.bot.expect import PresenceKey, actual_presence, settle
from tests.commands.conftest import text_of

pytestmark = pytest.mark.slow

HOUR = timedelta(hours=1)


async def subscribe_presence(dsn: str, granted: int, without: int) -> None:
    """Seed the platform; both guilds subscribe to the free tier, ``granted`` with the
    presence feature added (a subscription's own feature list), ``without`` as it is.

    Not the pro tier: the random traffic's commands would then render charts in the bot
    process (/growth, /retention), which on a loaded machine holds its event loop long enough
    for shard leases to lapse, and shards that move lose voice seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        await platform.seed(conn, platform.load())
        free = list(
            await conn.fetchval(
                "SELECT array_agg(feature ORDER BY feature) FROM tier_features WHERE tier = 'free'"
            )
        )
        for guild, features in ((granted, [*free, "presence"]), (without, free)):
            await conn.execute(
                "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
                " source_name, source_uid) VALUES ($1, 'free', $2, $3::jsonb, 'ns', $4, $4)",
                guild,
                features,
                json.dumps({"queries_per_month": 500}),
                f"sub-{guild}",
            )
    finally:
        await conn.close()


def expected_hours(
    rows: list[tuple[int, datetime, str]], tz: str, since: datetime, until: datetime
) -> dict[datetime, int]:
    """Local hour start → distinct members online in it, from (member, at, status) rows."""
    zone = ZoneInfo(tz)
    by_member: dict[int, list[tuple[datetime, str]]] = {}
    for user, at, status in sorted(rows, key=lambda r: (r[0], r[1])):
        by_member.setdefault(user, []).append((at, status))
    hours: dict[datetime, set[int]] = {}
    for user, changes in by_member.items():
        for i, (at, status) in enumerate(changes):
            end = changes[i + 1][0] if i + 1 < len(changes) else until
            start, end = max(at, since), min(end, until)
            if status == "offline" or end <= start:
                continue
            hour = start.astimezone(zone).replace(minute=0, second=0, microsecond=0)
            while hour < end:
                hours.setdefault(hour, set()).add(user)
                hour += HOUR
    return {h: len(users) for h, users in hours.items()}


async def test_presence_of_granted_guilds_only_reaches_clickhouse_and_online(
    fleet: Fleet, sim: Simulator
) -> None:
    dsn = fleet.endpoints.postgres_dsn
    guilds = sorted(sim.world.guilds)
    granted, without = guilds[0], guilds[1]
    await subscribe_presence(dsn, granted, without)
    fleet.extra_env["HERWA_BOT_PRESENCE_CAPTURE"] = "true"
    for name in split_names(2):
        await fleet.start(name)
    await wait_for(fleet.all_connected, 30, "all shards connected once")

    # Random presence in every guild, with messages around it; a few changes forced in the
    # granted guild so that it surely has transitions and repeats.
    member = next(uid for uid in sim.world.guilds[granted].members if uid != sim.world.bot_user.id)
    for status, types in (("online", 0), ("online", 0), ("idle", 4), ("idle", 4), ("offline", 0)):
        sim.activity.presence_update(granted, member, status, types, at_ms=sim.now_ms())
    for _ in range(10):
        sim.step(60, family="presence")
        sim.step(20, family="message")
        # Updates that change nothing a transition is made of (a new song): recorded never.
        online = [(k, v) for k, v in sim.activity.presences.items() if k[0] == granted]
        for (guild, user), (status, types) in online[:3]:
            sim.activity.presence_update(guild, user, status, types, at_ms=sim.now_ms())
        await asyncio.sleep(0.1)
    took = await settle(sim, dsn, content=False, presence={granted}, timeout=30)

    led = sim.ledger
    sent: Counter[str] = Counter()
    for p in led.presences:
        kind = "granted" if p.guild_id == granted else "other"
        sent[f"{kind} {'transitions' if p.transition else 'repeats'}"] += 1
    assert sent["granted transitions"] > 0, sent
    assert sent["granted repeats"] > 0, sent
    assert sent["other transitions"] > 0, sent
    staged = await actual_presence(dsn)
    assert set(g for g, *_ in staged) == {granted}
    assert staged == led.presence_rows({granted})

    # The ETL: ClickHouse holds the same rows, to the microsecond.
    result = await run_once(dsn, fleet.endpoints.clickhouse_url, None, RunOptions(batch_rows=1000))
    assert result.outcome == "caught_up", result.error
    pg_rows = await pg(
        dsn, "SELECT guild_id, user_id, at, status, activity_types FROM presence_events"
    )
    ch = await clickhouse_url_client(fleet.endpoints.clickhouse_url)
    try:
        ch_rows = (
            await ch.query(
                "SELECT guild_id, user_id, at, toString(status), activity_types"
                " FROM presence_events FINAL"
            )
        ).result_rows
        loaded: Counter[PresenceKey] = Counter((g, u, s, t) for g, u, _, s, t in ch_rows)
        assert loaded == led.presence_rows({granted})
        assert sorted((g, u, at.replace(tzinfo=UTC)) for g, u, at, _, _ in ch_rows) == sorted(
            (r["guild_id"], r["user_id"], r["at"]) for r in pg_rows
        )

        # Online members by hour, from ClickHouse, equal to the same count made from staging.
        tz = "Asia/Kolkata"  # a half-hour zone: its hours are not UTC's
        until = datetime.now(UTC) + timedelta(minutes=1)
        since = until - timedelta(days=1)
        hours = await analytics.online_by_hour(ch, granted, tz, since, until)
    finally:
        await ch.close()
    transitions = [(r["user_id"], r["at"], r["status"]) for r in pg_rows]
    expected = expected_hours(transitions, tz, since, until)
    assert {h.start: h.members for h in hours} == expected
    assert sum(expected.values()) > 0

    # /online: the granted guild gets the count (its time zone is UTC); the others are told
    # which tier unlocks it.
    reply = text_of(await sim.invoke_command(granted, "online", timeout=20))
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    today = expected_hours(transitions, "UTC", day, now)
    peak = max(today.values())
    assert f"Peak: {peak} members" in reply, reply
    for guild in (without, guilds[2]):
        denied = text_of(await sim.invoke_command(guild, "online", timeout=20))
        assert "part of the **pro** tier" in denied, denied
        assert "Peak" not in denied, denied
    print(
        f"ledger matched {took:.1f}s after traffic; updates sent {dict(sent)}; "
        f"rows staged {sum(staged.values())} = ClickHouse {len(ch_rows)}; "
        f"hours {len(hours)}, peak today {peak}"
    )
