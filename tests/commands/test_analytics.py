"""Each analytics command answers with the exact numbers of the constructed data set."""

from __future__ import annotations

import base64
import csv
import io

from herwa.bot.commands import GROWTH_SIZE, HEATMAP_SIZE, RETENTION_SIZE, png_size
from tests.commands.conftest import Harness, build_dataset, fields_of, is_ephemeral, opt, text_of

WEEK = [opt("days", 7), opt("end", "2024-03-10")]


def attachment(result: dict[str, object], name: str) -> bytes:
    original = result["original"]
    assert isinstance(original, dict)
    (att,) = original["attachments"]
    assert att["filename"] == name
    return base64.b64decode(att["data_base64"])


async def test_overview_and_heatmap_exact(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("free")

    result = await h.invoke("overview", WEEK)
    assert result["response_type"] == 4
    assert not is_ephemeral(result)
    assert fields_of(result) == {
        "Messages": "9",
        "Active members": "3",
        "Voice time": "2 h 0 min",
        "Voice members": "2",
        "Joins": "3",
        "Leaves": "1",
        "Net growth": "+2",
        "Reactions": "0",
    }
    assert "2024-03-04 to 2024-03-10 (UTC)" in text_of(result)

    result = await h.invoke("heatmap", WEEK, include_bytes=True)
    text = text_of(result)
    assert (
        "9 messages. Busiest hour: Mon 10:00-11:00 with 5 messages. "
        "Busiest day: Mon with 5. Times in UTC."
    ) in text
    png = attachment(result, "heatmap.png")
    assert png_size(png) == HEATMAP_SIZE
    (att,) = result["original"]["attachments"]
    assert att.get("description", "").startswith("9 messages.")

    # Only Tuesday: U2's two surviving messages and U3's two.
    result = await h.invoke("heatmap", [opt("days", 1), opt("end", "2024-03-05")])
    assert "4 messages. Busiest hour: Tue 14:00-15:00 with 4 messages." in text_of(result)


async def test_other_analytics_commands_exact(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("enterprise")
    u1, u2, u3, _ = h.users[:4]
    c1, c2 = h.channels[:2]

    # Leaderboard, page size 2: U1 5; U2 and U3 tie at 2 (ties by user id).
    first, second = sorted([u2, u3])
    result = await h.invoke("leaderboard", WEEK)
    (e,) = result["original"]["embeds"]
    assert e["description"].endswith(f"1. <@{u1}> — 5 messages\n2. <@{first}> — 2 messages")
    assert e["footer"]["text"] == "Page 1 · more on page 2"
    result = await h.invoke("leaderboard", [*WEEK, opt("page", 2)])
    (e,) = result["original"]["embeds"]
    assert e["description"].endswith(f"3. <@{second}> — 2 messages")
    assert e["footer"]["text"] == "Page 2"

    result = await h.invoke("voice-leaderboard", WEEK)
    (e,) = result["original"]["embeds"]
    assert e["description"].endswith(f"1. <@{u2}> — 1 h 30 min\n2. <@{u1}> — 30 min")

    result = await h.invoke("channels", WEEK)
    (e,) = result["original"]["embeds"]
    assert e["description"].endswith(
        f"1. <#{c1}> — 7 messages, 2 authors\n2. <#{c2}> — 2 messages, 1 authors"
    )
    assert e["footer"]["text"] == "Page 1 of 1"
    result = await h.invoke("channels", [*WEEK, opt("channel", f"<#{c2}>")])
    (e,) = result["original"]["embeds"]
    assert e["description"].endswith(f"1. <#{c2}> — 2 messages, 1 authors")

    result = await h.invoke("me", WEEK)  # the owner, U1
    assert is_ephemeral(result)
    assert fields_of(result) == {
        "Messages": "5",
        "Active hours": "1",
        "Channels": "1",
        "Voice time": "30 min",
        "Voice sessions": "1",
        "First joined": "unknown",
    }
    result = await h.invoke("me", WEEK, user=u2)
    fields = fields_of(result)
    assert (fields["Messages"], fields["Voice time"]) == ("2", "1 h 30 min")
    assert fields["First joined"] == "<t:1709542800:D>"  # 2024-03-04 09:00 UTC

    result = await h.invoke("growth", WEEK, include_bytes=True)
    assert "3 joins, 1 leaves, net +2. Members: 10 on 2024-03-04, 11 on 2024-03-05." in text_of(
        result
    )
    assert png_size(attachment(result, "growth.png")) == GROWTH_SIZE

    result = await h.invoke("retention", [*WEEK, opt("weeks", 2)], include_bytes=True)
    assert "2024-03-04: 3 joined; active week 0: 2, week 1: 0" in text_of(result)
    assert png_size(attachment(result, "retention.png")) == RETENTION_SIZE

    result = await h.invoke("export", WEEK, include_bytes=True)
    assert is_ephemeral(result)
    data = attachment(result, f"herwa-{h.guild}-2024-03-04-2024-03-10.csv")
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[:4] == [
        ["day", "messages", "active_members", "voice_minutes", "joins", "leaves", "member_count"],
        ["2024-03-04", "5", "1", "30", "2", "0", "10"],
        ["2024-03-05", "4", "2", "90", "1", "0", "11"],
        ["2024-03-06", "0", "0", "0", "0", "1", ""],
    ]
    assert len(rows) == 8


async def test_retention_offers_voice_participation_beside_messages(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    await h.grant("enterprise")
    # Cohort of 2024-03-04: U2, U3, U4. U2 and U3 wrote that week, only U2 was in voice (U1,
    # also in voice, did not join in the range).
    expected = "2024-03-04: 3 joined; active week 0: 2, week 1: 0; in voice week 0: 1, week 1: 0"
    messages = await h.invoke("retention", [*WEEK, opt("weeks", 2)], include_bytes=True)
    voice = await h.invoke(
        "retention", [*WEEK, opt("weeks", 2), opt("activity", "voice")], include_bytes=True
    )
    for result in (messages, voice):
        assert expected in text_of(result)
        assert png_size(attachment(result, "retention.png")) == RETENTION_SIZE
    # The chart is the chosen activity's: 2 of 3 (67 %) against 1 of 3 (33 %).
    assert attachment(messages, "retention.png") != attachment(voice, "retention.png")

    result = await h.invoke("retention", [*WEEK, opt("activity", "typing")])
    assert is_ephemeral(result)
    assert "`activity` must be `messages` or `voice`." in text_of(result)
