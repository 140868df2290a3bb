"""/help lists what the server's tier offers and names the tier that unlocks each other command."""

from __future__ import annotations

from tests.commands.conftest import Harness, fields_of, is_ephemeral, text_of


async def test_help_follows_the_tier(harness: Harness) -> None:
    h = harness
    await h.grant("free")
    result = await h.invoke("help", [])
    assert is_ephemeral(result)
    assert "Tier: **free**" in text_of(result)
    fields = fields_of(result)
    yours = fields["Yours to use"].splitlines()
    assert {line.split("`")[1] for line in yours} == {
        "/overview",
        "/heatmap",
        "/leaderboard",
        "/voice-leaderboard",
        "/me",
        "/usage",
        "/privacy",
        "/config",
        "/help",
    }
    assert "`/heatmap` — " in fields["Yours to use"]  # each with its own description
    locked = fields["With a higher tier"].splitlines()
    assert {line.split("`")[1]: line.rsplit("**", 2)[1] for line in locked} == {
        "/growth": "pro",
        "/retention": "pro",
        "/channels": "pro",
        "/reactions": "pro",
        "/online": "pro",
        "/export": "enterprise",
    }

    await h.grant("enterprise")
    fields = fields_of(await h.invoke("help", []))
    assert "With a higher tier" not in fields
    assert "`/export` — " in fields["Yours to use"]
