"""The deployed bot serves the slash commands: two `herwa bot` processes, each answering for
the guilds of the shards it owns, through the entitlement gate."""

from __future__ import annotations

import json

import asyncpg
import pytest

from herwa import platform
from herwa.bot.sharding import assigned_shards
from herwa.simulator import Simulator
from tests.bot.conftest import SHARDS, Fleet, split_names, wait_for
from tests.commands.conftest import is_ephemeral, text_of

pytestmark = pytest.mark.slow


async def test_both_pods_answer_commands_through_the_gate(fleet: Fleet, sim: Simulator) -> None:
    names = split_names(2)
    for name in names:
        await fleet.start(name)
    await wait_for(fleet.all_connected, 30, "all shards connected once")
    # The owner of shard 0 publishes the command list once.
    await wait_for(lambda: _published(sim), 15, "global commands synced by the owner of shard 0")

    conn = await asyncpg.connect(fleet.endpoints.postgres_dsn)
    try:
        await platform.seed(conn, platform.load())
        first, second = (assigned_shards(names, name, SHARDS) for name in names)
        shard_of = {g.id: sim.shard_of(g.id, SHARDS) for g in sim.world.guilds.values()}
        subscribed = next(g for g, s in shard_of.items() if s in first)
        unsubscribed = next(g for g, s in shard_of.items() if s in second)
        features = await conn.fetchval(
            "SELECT array_agg(feature ORDER BY feature) FROM tier_features WHERE tier = 'pro'"
        )
        await conn.execute(
            "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
            " source_name, source_uid) VALUES ($1, 'pro', $2, $3::jsonb, 'ns', 'sub', 'uid')",
            subscribed,
            features,
            json.dumps({"queries_per_month": 500, "history_days": 365}),
        )
    finally:
        await conn.close()

    usage = await sim.invoke_command(subscribed, "usage", timeout=20)
    assert is_ephemeral(usage)
    assert "Tier: **pro**" in text_of(usage)
    assert "Queries: 0 of 500" in text_of(usage)

    # A server without a GuildSubscription has the platform's default tier, quota included;
    # what lies beyond it is denied, naming the tier that unlocks it.
    default = await sim.invoke_command(unsubscribed, "usage", timeout=20)
    assert "Tier: **free**" in text_of(default)
    assert "Queries: 0 of 1,000" in text_of(default)
    overview = await sim.invoke_command(unsubscribed, "overview", timeout=20)
    assert text_of(overview).startswith("Server overview")
    spent = await sim.invoke_command(unsubscribed, "usage", timeout=20)
    assert "Queries: 1 of 1,000" in text_of(spent)
    denied = await sim.invoke_command(unsubscribed, "growth", timeout=20)
    assert is_ephemeral(denied)
    assert text_of(denied) == (
        "`/growth` is not included in this server's **free** tier. It is part of the **pro** tier."
    )

    # Each answer came from the pod that owns the guild's shard: both pods took part.
    answered = {
        name: (await bot.metrics()).count('herwa_command_invocations_total{command="')
        for name, bot in fleet.bots.items()
    }
    assert all(count > 0 for count in answered.values()), answered


async def _published(sim: Simulator) -> bool:
    return sim.app.find_command("overview", None) is not None
