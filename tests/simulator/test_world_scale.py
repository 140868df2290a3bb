"""A world of Discord's size: every id a store can hold, guilds spread over every shard."""

from __future__ import annotations

from collections import Counter

from herwa.simulator import Simulator, SimulatorConfig, WorldConfig

# Past about 23,000 guilds a day apart, guild creation times ran beyond 2084 and the ids
# overflowed a signed 64-bit integer: the bot rejected those guilds' GUILD_CREATE.
GUILDS = 30_000


def test_large_world_ids_fit_a_signed_bigint_and_spread_over_shards() -> None:
    world_config = WorldConfig(
        guilds=GUILDS,
        members_per_guild=(1, 1),
        text_channels=1,
        voice_channels=0,
        stage_channels=0,
        threads=0,
    )
    sim = Simulator(SimulatorConfig(guilds=GUILDS, world=world_config, record_deliveries=False))
    world = sim.world
    ids = [
        *world.guilds,
        *world.channels,
        *(uid for g in world.guilds.values() for uid in g.members),
    ]
    assert len(world.guilds) == GUILDS
    assert max(ids) < 2**63
    for shard_count in (16, 200, 1008):
        per_shard = Counter((gid >> 22) % shard_count for gid in world.guilds)
        assert len(per_shard) == shard_count
        assert max(per_shard.values()) - min(per_shard.values()) <= 1
