"""Privacy requests land in Postgres and the ETL carries them out; settings change answers."""

from __future__ import annotations

from herwa.etl.runner import RunOptions, run_once
from tests.commands.conftest import (
    Harness,
    build_dataset,
    fields_of,
    is_ephemeral,
    opt,
    sub,
    text_of,
)
from tests.etl import ch_value

WEEK = [opt("days", 7), opt("end", "2024-03-10")]
MEMBER = 1071698660929  # @everyone's permissions in the simulator: no Manage Server


async def _etl(h: Harness) -> None:
    result = await run_once(
        h.endpoints.postgres_dsn,
        h.endpoints.clickhouse_url,
        None,
        RunOptions(retention_hours=24 * 365 * 10, expire_history=False),
    )
    assert result.outcome == "caught_up", result.error


async def test_config_changes_what_commands_answer(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("free")
    before = await h.invoke("heatmap", WEEK)
    assert "Busiest hour: Mon 10:00-11:00 with 5 messages" in text_of(before)

    result = await h.invoke("config", sub("timezone", opt("name", "Asia/Kolkata")))
    assert is_ephemeral(result)
    assert text_of(result) == "Time zone set to **Asia/Kolkata**."
    # 10:00 UTC is 15:30 in Kolkata; the cached UTC heatmap was dropped with the change.
    after = await h.invoke("heatmap", WEEK)
    assert "Busiest hour: Mon 15:00-16:00 with 5 messages" in text_of(after)
    assert "Times in Asia/Kolkata." in text_of(after)

    c1, c2 = h.channels[:2]
    result = await h.invoke("config", sub("channels", opt("channels", f"<#{c1}>, {c2}")))
    assert text_of(result) == f"Tracking 2 channel(s): <#{c1}> <#{c2}>"
    result = await h.invoke("config", sub("snapshot-hour", opt("hour", 5)))
    assert text_of(result) == "Daily snapshot at **05:00 UTC**."
    row = await h.pool.fetchrow("SELECT * FROM guilds WHERE guild_id = $1", h.guild)
    assert row is not None
    assert (row["timezone"], row["tracked_channel_ids"], row["snapshot_hour_utc"]) == (
        "Asia/Kolkata",
        [c1, c2],
        5,
    )
    result = await h.invoke("config", sub("show"))
    assert "Time zone: Asia/Kolkata" in text_of(result)
    assert f"Tracked channels: <#{c1}> <#{c2}>" in text_of(result)
    result = await h.invoke("config", sub("channels", opt("channels", "all")))
    assert text_of(result) == "Every channel is tracked now."
    assert (
        await h.pool.fetchval("SELECT tracked_channel_ids FROM guilds WHERE guild_id = $1", h.guild)
        is None
    )


async def test_privacy_requests_are_carried_out(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("free")
    u1, u2, u3 = h.users[:3]

    result = await h.invoke("privacy", sub("opt-out"), user=u3)
    assert is_ephemeral(result)
    assert text_of(result).startswith("You have opted out")
    result = await h.invoke("privacy", sub("opt-in"), user=u3)
    assert text_of(result).startswith("You are opted in again")
    assert await h.pool.fetchval("SELECT count(*) FROM opt_outs") == 0

    result = await h.invoke("privacy", sub("delete-my-data", opt("confirm", True)), user=u2)
    assert text_of(result).startswith("Your data in this server will be deleted")
    assert (
        await h.pool.fetchval(
            "SELECT count(*) FROM opt_outs WHERE guild_id = $1 AND user_id = $2", h.guild, u2
        )
        == 1
    )
    await _etl(h)
    result = await h.invoke("me", WEEK, user=u2)
    assert "Messages: 0" in text_of(result)
    assert "You have opted out" in text_of(result)

    result = await h.invoke("privacy", sub("delete-server-data", opt("confirm", True)), user=u1)
    assert text_of(result) == (
        "All of this server's recorded data will be deleted with the next data run, and "
        "nothing more is recorded here until an admin runs `/privacy server-opt-in`."
    )
    ((scope, by),) = await h.pool.fetch(
        "SELECT scope, requested_by FROM deletion_requests WHERE scope = 'guild'"
    )
    assert (scope, by) == ("guild", u1)
    assert h.guild in h.rt.deps.tombstones  # capture stops at once in this pod
    await _etl(h)
    result = await h.invoke("overview", WEEK)
    assert "Messages: 0" in text_of(result)
    # The other guild keeps its data.
    assert await ch_value(h.endpoints, "SELECT count() FROM messages FINAL") == 100

    # Only an admin opts the server back in, once.
    result = await h.invoke("privacy", sub("server-opt-in"), user=u2, permissions=MEMBER)
    assert "Manage Server" in text_of(result)
    assert h.guild in h.rt.deps.tombstones
    result = await h.invoke("privacy", sub("server-opt-in"), user=u1)
    assert text_of(result).startswith("This server's activity is recorded again from now on")
    assert h.guild not in h.rt.deps.tombstones
    assert (
        await h.pool.fetchval(
            "SELECT resumed_by FROM guild_tombstones WHERE guild_id = $1", h.guild
        )
        == u1
    )
    result = await h.invoke("privacy", sub("server-opt-in"), user=u1)
    assert text_of(result).startswith("This server's activity is being recorded")


async def test_privacy_needs_no_subscription(harness: Harness) -> None:
    """Members' rights are never behind a paid tier: no entitlement row, no cache entry."""
    h = harness
    u1, u2 = h.users[:2]
    assert await h.pool.fetchval("SELECT count(*) FROM entitlements") == 0

    result = await h.invoke("privacy", sub("opt-out"), user=u2)
    assert is_ephemeral(result)
    assert text_of(result).startswith("You have opted out")
    result = await h.invoke("privacy", sub("delete-server-data", opt("confirm", True)), user=u1)
    assert text_of(result).startswith("All of this server's recorded data will be deleted")
    assert await h.pool.fetchval("SELECT count(*) FROM opt_outs WHERE user_id = $1", u2) == 1
    assert await h.pool.fetchval("SELECT count(*) FROM deletion_requests") == 1
    # A second server's deletion adds to the first's: both stay unrecorded.
    result = await h.invoke(
        "privacy", sub("delete-server-data", opt("confirm", True)), guild=h.other
    )
    assert text_of(result).startswith("All of this server's recorded data will be deleted")
    assert h.guild in h.rt.deps.tombstones
    assert h.other in h.rt.deps.tombstones
    # Gated commands beyond the default tier stay denied for the same unsubscribed guild.
    result = await h.invoke("growth")
    assert text_of(result).startswith("`/growth` is not included in this server's **free** tier")


async def test_a_member_hidden_from_leaderboards_still_counts(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("enterprise")
    u1, u2, u3, _ = h.users[:4]
    first, second = sorted([u2, u3])

    result = await h.invoke("privacy", sub("hide-from-leaderboards"), user=u1)
    assert is_ephemeral(result)
    assert "left off this server's leaderboards" in text_of(result)
    # U1 (5 messages, 30 min in voice) is not named; everyone below moves up.
    (e,) = (await h.invoke("leaderboard", WEEK))["original"]["embeds"]
    assert e["description"].endswith(f"1. <@{first}> — 2 messages\n2. <@{second}> — 2 messages")
    assert e["footer"]["text"] == "Page 1"
    (e,) = (await h.invoke("voice-leaderboard", WEEK))["original"]["embeds"]
    assert e["description"].endswith(f"1. <@{u2}> — 1 h 30 min")
    assert f"<@{u1}>" not in e["description"]
    # Still counted in every total.
    assert fields_of(await h.invoke("overview", WEEK))["Messages"] == "9"

    await h.invoke("privacy", sub("show-on-leaderboards"), user=u1)
    (e,) = (await h.invoke("leaderboard", WEEK))["original"]["embeds"]
    assert e["description"].endswith(f"1. <@{u1}> — 5 messages\n2. <@{first}> — 2 messages")
