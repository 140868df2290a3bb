"""A real discord.py client with Herwa's commands installed, driven over the simulator's
websocket, against real (migrated) Postgres, Redis and a read-only ClickHouse user."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import discord
import pytest
from discord import app_commands
from redis.asyncio import Redis

from herwa import platform
from herwa.bot.commands import CommandDeps, CommandRuntime, install
from herwa.config import CommandSettings
from herwa.devstack import Endpoints
from herwa.etl.runner import RunOptions, run_once
from herwa.json_types import Json
from herwa.simulator import Simulator, SimulatorConfig, point_discord_at
from herwa.simulator.client import restore_discord_defaults
from herwa.stores import clickhouse_url_client

PREFIX = "herwa:"
D0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
# Quotas for tests: history reaching back to the fixed 2024 data set.
LONG_HISTORY = {"queries_per_month": 1000, "history_days": 3650}


@dataclass
class Harness:
    sim: Simulator
    pool: asyncpg.Pool
    redis: Redis
    rt: CommandRuntime
    client: discord.Client
    endpoints: Endpoints
    guild: int  # the guild under test
    other: int  # another guild, whose data must never show
    users: list[int] = field(default_factory=list)  # members of `guild`; users[0] = owner
    channels: list[int] = field(default_factory=list)  # text channels of `guild`

    async def invoke(
        self,
        name: str,
        options: list[Json] | None = None,
        *,
        user: int | None = None,
        guild: int | None = None,
        include_bytes: bool = False,
        timeout: float = 20.0,
        permissions: int | None = None,
    ) -> Json:
        return await self.sim.invoke_command(
            guild or self.guild,
            name,
            options,
            user_id=user,
            include_bytes=include_bytes,
            timeout=timeout,
            permissions=permissions,
        )

    async def autocomplete(
        self,
        name: str,
        options: list[Json],
        *,
        user: int | None = None,
        permissions: int | None = None,
    ) -> Json:
        """The member types in the option marked ``focused``: the bot's choices."""
        return await self.sim.autocomplete(
            self.guild, name, options, user_id=user, permissions=permissions
        )

    async def grant(
        self,
        tier: str,
        quotas: dict[str, int] | None = None,
        *,
        guild: int | None = None,
        features: list[str] | None = None,
    ) -> None:
        """An entitlement row as the operator writes it (the bot re-warms its cache from it)."""
        gid = guild or self.guild
        if features is None:
            features = await self.pool.fetchval(
                "SELECT array_agg(feature ORDER BY feature) FROM tier_features WHERE tier = $1",
                tier,
            )
        await self.pool.execute(
            """INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,
                   source_name, source_uid) VALUES ($1, $2, $3, $4::jsonb, 'ns', 'sub', 'uid')
               ON CONFLICT (guild_id) DO UPDATE SET tier = EXCLUDED.tier,
                   features = EXCLUDED.features, quotas = EXCLUDED.quotas""",
            gid,
            tier,
            features,
            json.dumps(quotas if quotas is not None else LONG_HISTORY),
        )
        await self.redis.delete(f"{PREFIX}cmdcache:{gid}")


def text_of(result: Json) -> str:
    """Everything a member reads in the original response: content, embed text and fields."""
    original = result["original"]
    parts = [original["content"]]
    for e in original["embeds"]:
        parts += [e.get("title", ""), e.get("description", "")]
        parts += [f"{f['name']}: {f['value']}" for f in e.get("fields", [])]
        parts.append(e.get("footer", {}).get("text", ""))
    return "\n".join(p for p in parts if p)


def fields_of(result: Json) -> dict[str, str]:
    (e,) = result["original"]["embeds"]
    return {f["name"]: f["value"] for f in e.get("fields", [])}


def is_ephemeral(result: Json) -> bool:
    return bool(result["original"]["flags"] & 64)


def opt(name: str, value: Any) -> Json:
    kind = 4 if isinstance(value, int) and not isinstance(value, bool) else 3
    if isinstance(value, bool):
        kind = 5
    return {"name": name, "type": kind, "value": value}


def sub(name: str, *options: Json) -> list[Json]:
    return [{"name": name, "type": 1, "options": list(options)}]


async def start_harness(
    endpoints: Endpoints,
    settings: CommandSettings | None = None,
    prepare: Callable[[Simulator], None] | None = None,
) -> tuple[Harness, list[Any]]:
    """``prepare`` shapes the simulated world (roles, overwrites) before the bot connects."""
    sim = Simulator(SimulatorConfig(guilds=2, seed=11))
    if prepare is not None:
        prepare(sim)
    await sim.start()
    point_discord_at(sim.api_base, sim.ws_url)
    pool = await asyncpg.create_pool(endpoints.postgres_dsn, min_size=1, max_size=8)
    redis = Redis.from_url(endpoints.redis_url)
    ch = await clickhouse_url_client(endpoints.clickhouse_readonly_url)
    await platform.seed(pool, platform.load())
    deps = CommandDeps(
        pool=pool,
        redis=redis,
        clickhouse=ch,
        settings=settings or CommandSettings(page_size=2, rate_limit_count=100),
        redis_prefix=PREFIX,
    )
    intents = discord.Intents.default()
    client = discord.Client(intents=intents, chunk_guilds_at_startup=False, guild_ready_timeout=0.2)
    tree = app_commands.CommandTree(client)
    rt = install(tree, deps)
    ready = asyncio.Event()
    client.event(_on_ready(ready))
    task = asyncio.create_task(client.start(sim.config.token))
    await asyncio.wait_for(ready.wait(), 15)
    await tree.sync()
    guild, other = sorted(sim.world.guilds)
    g = sim.world.guilds[guild]
    users = [
        g.owner_id,
        *sorted(uid for uid, m in g.members.items() if uid != g.owner_id and not m.user.bot),
    ]
    text = sorted(c.id for c in g.channels.values() if c.type == 0)
    h = Harness(sim, pool, redis, rt, client, endpoints, guild, other, users, text)
    return h, [task, ch]


def _on_ready(ready: asyncio.Event) -> Any:
    async def on_ready() -> None:
        ready.set()

    return on_ready


async def stop_harness(h: Harness, extra: list[Any]) -> None:
    task, ch = extra
    await h.client.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    await ch.close()
    await h.redis.aclose()
    await h.pool.close()
    await h.sim.stop()
    restore_discord_defaults()


@pytest.fixture
async def harness(migrated: Endpoints) -> AsyncIterator[Harness]:
    h, extra = await start_harness(migrated)
    try:
        yield h
    finally:
        await stop_harness(h, extra)


# ----------------------------------------------------------------- the constructed data set


async def build_dataset(h: Harness) -> None:
    """Stage a small, exactly known data set in Postgres and run the ETL once.

    Guild under test, UTC, week of Mon 2024-03-04:
    - messages: U1 5x Mon 10:0x in C1; U2 3x Tue 14:0x in C2 (one later deleted);
      U3 2x Tue 14:3x in C1; a bot 4x Mon 10:xx in C1 (never counted).
    - voice: U1 30 min Mon 11:00; U2 90 min Tue 20:00.
    - members: U2 joins Mon 09:00, U4 joins Mon 12:00, U3 joins Tue 09:00, U4 leaves Wed 12:00.
    - member count snapshots: 10 on 03-04, 11 on 03-05.
    The other guild gets 100 messages, voice and joins in the same hours.
    """
    u1, u2, u3, u4 = h.users[:4]
    c1, c2 = h.channels[:2]
    bot_user = 999_000_000_000_000_001
    rows: list[tuple[int, int, int, int, datetime, bool]] = []
    mid = 1_000_000

    def add(guild: int, channel: int, author: int, at: datetime, is_bot: bool = False) -> int:
        nonlocal mid
        mid += 1
        rows.append((mid, guild, channel, author, at, is_bot))
        return mid

    mon10 = D0 + timedelta(hours=10)
    tue14 = D0 + timedelta(days=1, hours=14)
    for i in range(5):
        add(h.guild, c1, u1, mon10 + timedelta(minutes=i))
    u2_ids = [add(h.guild, c2, u2, tue14 + timedelta(minutes=i)) for i in range(3)]
    for i in range(2):
        add(h.guild, c1, u3, tue14 + timedelta(minutes=30 + i))
    for i in range(4):
        add(h.guild, c1, bot_user, mon10 + timedelta(minutes=20 + i), True)
    other_channel = 555_000_000_000_000_001
    for i in range(100):
        add(h.other, other_channel, 777_000_000_000_000_000 + i % 7, mon10 + timedelta(seconds=i))
    await h.pool.executemany(
        "INSERT INTO message_events (message_id, guild_id, channel_id, author_id, created_at,"
        " kind, is_bot) VALUES ($1, $2, $3, $4, $5, 'text', $6)",
        rows,
    )
    await h.pool.execute(
        "INSERT INTO message_deletions (message_id, guild_id, channel_id, deleted_at)"
        " VALUES ($1, $2, $3, $4)",
        u2_ids[0],
        h.guild,
        c2,
        tue14 + timedelta(hours=1),
    )
    voice = [
        (h.guild, 70, u1, D0 + timedelta(hours=11), timedelta(minutes=30)),
        (h.guild, 70, u2, D0 + timedelta(days=1, hours=20), timedelta(minutes=90)),
        (h.other, 71, 777_000_000_000_000_000, D0 + timedelta(hours=11), timedelta(hours=9)),
    ]
    await h.pool.executemany(
        "INSERT INTO voice_sessions (session_id, guild_id, channel_id, user_id, joined_at,"
        " left_at, close_reason) VALUES (gen_random_uuid(), $1, $2, $3, $4::timestamptz,"
        " $4::timestamptz + $5::interval, 'leave')",
        voice,
    )
    members = [
        (h.guild, u2, "join", D0 + timedelta(hours=9)),
        (h.guild, u4, "join", D0 + timedelta(hours=12)),
        (h.guild, u3, "join", D0 + timedelta(days=1, hours=9)),
        (h.guild, u4, "leave", D0 + timedelta(days=2, hours=12)),
        *[
            (h.other, 777_000_000_000_000_000 + i, "join", D0 + timedelta(hours=9))
            for i in range(20)
        ],
    ]
    await h.pool.executemany(
        "INSERT INTO member_events (guild_id, user_id, event, at, account_created_at)"
        " VALUES ($1, $2, $3, $4::timestamptz, $4::timestamptz - interval '400 days')",
        members,
    )
    await h.pool.executemany(
        "INSERT INTO member_count_snapshots (guild_id, day, member_count) VALUES ($1, $2, $3)",
        [
            (h.guild, D0.date(), 10),
            (h.guild, (D0 + timedelta(days=1)).date(), 11),
            (h.other, D0.date(), 5000),
        ],
    )
    # The fixed 2024 data set is older than every tier's window: kept as staged.
    result = await run_once(
        h.endpoints.postgres_dsn,
        h.endpoints.clickhouse_url,
        None,
        RunOptions(retention_hours=24 * 365 * 10, expire_history=False),
    )
    assert result.outcome == "caught_up", result.error
