"""Message edits as Discord stamps them: every edit of a message has its own
``edited_timestamp``, and the bot stores each one exactly once."""

from __future__ import annotations

from herwa.simulator import Simulator
from tests.bot.conftest import Fleet, pg, wait_for
from tests.bot.expect import settle


async def test_two_edits_of_a_message_in_one_millisecond_are_two_edits(
    fleet: Fleet, sim: Simulator
) -> None:
    # The random traffic generates its events in bursts that share a millisecond; seed 11 edits
    # one message twice in a row in one burst (it cost the scaling test an edit). Here the
    # same, deterministically.
    await fleet.start("bot-a")
    await wait_for(fleet.all_connected, 30, "one bot owning every shard")
    guild = next(iter(sim.world.guilds.values()))
    channel = guild.text_channels()[0]
    author = next(m for m in guild.members.values() if not m.user.bot)
    at = sim.now_ms()
    actions = sim.activity
    mid = actions.post_message(guild.id, channel.id, author.user.id, at_ms=at)
    actions.edit_message(mid, at_ms=at)
    actions.edit_message(mid, at_ms=at)
    dsn = fleet.endpoints.postgres_dsn

    await settle(sim, dsn, content=False, timeout=20)

    rows = await pg(
        dsn, "SELECT edited_at FROM message_edits WHERE message_id = $1 ORDER BY 1", mid
    )
    assert len(rows) == 2
    assert rows[0]["edited_at"] < rows[1]["edited_at"]
