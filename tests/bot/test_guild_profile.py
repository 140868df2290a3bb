"""GUILD_UPDATE through a running `herwa bot`: the server's name, icon and owner are kept current,
and what a payload gets wrong is counted and stored as NULL, never blocking what follows."""

from __future__ import annotations

import pytest

from herwa.simulator import Simulator
from tests.bot.conftest import Fleet, pg, wait_for

pytestmark = pytest.mark.slow

ICON = "a_" + "0123456789abcdef" * 2


async def _profile(dsn: str, guild_id: int) -> tuple[object, ...] | None:
    rows = await pg(dsn, "SELECT name, icon, owner_id FROM guilds WHERE guild_id = $1", guild_id)
    return tuple(rows[0]) if rows else None


async def test_guild_update_keeps_name_icon_and_owner(fleet: Fleet, sim: Simulator) -> None:
    bot = await fleet.start("bot-0")
    await wait_for(fleet.all_connected, 30, "all shards connected")
    dsn = fleet.endpoints.postgres_dsn
    guild, other = list(sim.world.guilds.values())[:2]
    heir = next(uid for uid, m in guild.members.items() if uid != guild.owner_id and not m.user.bot)
    # GUILD_CREATE brought the owner in.
    original = (guild.name, None, guild.owner_id)
    await wait_for(lambda: _equal(dsn, guild.id, original), 20, "the GUILD_CREATE profile")

    sim.activity.update_guild(guild.id, name="Renamed", icon=ICON, owner_id=heir)
    await wait_for(lambda: _equal(dsn, guild.id, ("Renamed", ICON, heir)), 20, "the update")

    # A hostile update: an icon that is no image hash, an owner that is no id, a NUL byte.
    sim.activity.update_guild(
        other.id, raw={"name": "Bad\x00name", "icon": "../../x", "owner_id": "12ab"}
    )
    await wait_for(lambda: _equal(dsn, other.id, ("Badname", None, None)), 20, "the bad one")
    metrics = await bot.metrics()
    for field in ("icon", "owner_id", "name"):
        assert (
            f'herwa_bot_payload_rejections_total{{event="GUILD_UPDATE",reason="{field}"}}'
            in metrics
        ), field
    # Admin settings are not the profile's: /config's time zone stays.
    rows = await pg(dsn, "SELECT timezone FROM guilds WHERE guild_id = $1", guild.id)
    assert rows[0]["timezone"] == "UTC"


async def _equal(dsn: str, guild_id: int, want: tuple[object, ...]) -> bool:
    return await _profile(dsn, guild_id) == want
