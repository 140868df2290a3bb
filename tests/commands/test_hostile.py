"""Hostile option values get clear, ephemeral errors that reveal nothing and cost nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.commands.conftest import Harness, build_dataset, is_ephemeral, opt, sub, text_of

SQL = "2024-03-10'; DROP TABLE messages; --"


async def test_hostile_options(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("pro", {"queries_per_month": 100, "history_days": 30})
    other_guild = h.sim.world.guilds[h.other]
    other_channel = next(c.id for c in other_guild.channels.values() if c.type == 0)

    cases: list[tuple[str, list[dict[str, object]], str]] = [
        (
            "overview",
            [opt("end", SQL)],
            "`end` must be a date written as YYYY-MM-DD, e.g. 2024-03-31.",
        ),
        ("heatmap", [opt("end", "2024-02-30")], "`end` is not a real calendar date."),
        ("overview", [opt("days", 10**12)], "`days` can be at most 30 on the pro tier."),
        ("overview", [opt("days", -5)], "`days` must be at least 1."),
        ("overview", [opt("days", "7 OR 1=1")], "`days` must be a whole number."),
        ("overview", [opt("end", "2999-01-01")], "`end` cannot be in the future."),
        (
            "overview",
            [opt("end", "2024-03-10")],
            "The pro tier keeps 30 days of history: choose an `end` within that window.",
        ),
        ("leaderboard", [opt("page", 10**6)], "`page` must be between 1 and 50."),
        (
            "channels",
            [opt("channel", "1 OR 1=1")],
            "Channels must be given as #mentions or numeric channel ids.",
        ),
        (
            "channels",
            [opt("channel", f"<#{other_channel}>")],
            "One of those channels is not a channel of this server.",
        ),
        (
            "channels",
            [opt("channel", "123456789012345678")],
            "One of those channels is not a channel of this server.",
        ),
        (
            "config",
            sub("timezone", opt("name", "Europe/Berlin'; DROP TABLE guilds; --")),
            "Give an IANA time zone name such as Europe/Berlin or America/New_York.",
        ),
        (
            "config",
            sub("timezone", opt("name", "../../../etc/passwd")),
            "Give an IANA time zone name such as Europe/Berlin or America/New_York.",
        ),
        (
            "config",
            sub("channels", opt("channels", f"{h.channels[0]} {other_channel}")),
            "One of those channels is not a channel of this server.",
        ),
        ("config", sub("snapshot-hour", opt("hour", 24)), "`hour` must be between 0 and 23."),
        (
            "privacy",
            sub("delete-server-data"),
            "Nothing was done: set `confirm` to True to go ahead.",
        ),
    ]
    for name, options, expected in cases:
        result = await h.invoke(name, options)
        assert is_ephemeral(result), (name, options)
        assert text_of(result) == expected, (name, options)

    # Nothing was charged, written or dropped.
    assert await h.rt.gate.quota_used(h.guild, datetime.now(UTC)) == 0
    assert await h.pool.fetchval("SELECT count(*) FROM guilds") == 0
    assert await h.pool.fetchval("SELECT count(*) FROM deletion_requests") == 0
    from tests.etl import ch_value

    assert await ch_value(h.endpoints, "SELECT count() FROM messages FINAL") == 114

    # The other guild's id as an option changes nothing: the guild always comes from the
    # interaction, and this guild's numbers (not the other's 100 messages) are answered.
    await h.grant("free", {"queries_per_month": 100, "history_days": 3650})
    result = await h.invoke(
        "overview", [opt("days", 7), opt("end", "2024-03-10"), opt("guild", str(h.other))]
    )
    assert "Messages: 9" in text_of(result)
    # And the other guild, without a subscription, gets its own default tier, nothing more.
    result = await h.invoke("growth", guild=h.other, user=h.sim.world.guilds[h.other].owner_id)
    assert text_of(result).startswith("`/growth` is not included in this server's **free** tier.")
