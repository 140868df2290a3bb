"""Option autocomplete through the real bot and the simulator's websocket: time zones for
/config timezone, channels for /channels and /config channels, only channels the member can
view, valid for Discord whatever was typed; the final values are still validated.

The server is test_channel_visibility's: C2 (#random) is staff-only, U4 has the staff role."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herwa.bot.commands import OptionError, parse_timezone
from herwa.devstack import Endpoints
from herwa.json_types import Json
from tests.commands.conftest import Harness, opt, start_harness, stop_harness, sub
from tests.commands.test_channel_visibility import MEMBER_PERMISSIONS, _staff_channel

GONE = 794_354_201_399_000_001  # in the bot's channels table, deleted from the server


@pytest.fixture
async def staff(migrated: Endpoints) -> AsyncIterator[Harness]:
    h, extra = await start_harness(migrated, prepare=_staff_channel)
    try:
        await h.pool.execute(
            "INSERT INTO channels (channel_id, guild_id, name, kind) VALUES"
            " ($1, $2, 'old-announcements', 'text'), ($3, $4, 'other-secret', 'text'),"
            " ($5, $2, 'a-category', 'category') ON CONFLICT DO NOTHING",
            GONE,
            h.guild,
            GONE + 1,
            h.other,
            GONE + 2,
        )
        yield h
    finally:
        await h.pool.execute(
            "DELETE FROM channels WHERE channel_id = ANY($1)", [GONE, GONE + 1, GONE + 2]
        )
        await stop_harness(h, extra)


def typing(name: str, value: object) -> Json:
    return {"name": name, "type": 3, "value": value, "focused": True}


async def zones(h: Harness, typed: object) -> list[Json]:
    result = await h.autocomplete("config", sub("timezone", typing("name", typed)))
    assert result["invalid"] is None, result
    choices: list[Json] = result["choices"]
    return choices


async def channel_choices(h: Harness, typed: object, **member: int) -> list[Json]:
    result = await h.autocomplete("channels", [typing("channel", typed)], **member)
    assert result["invalid"] is None, result
    choices: list[Json] = result["choices"]
    return choices


def valid_zone(name: str) -> bool:
    try:
        return parse_timezone(name) == name
    except OptionError:
        return False


async def test_time_zones_offered_as_typed(staff: Harness) -> None:
    h = staff
    config = h.sim.app.find_command("config", h.guild)
    assert config is not None
    (registered,) = [o for o in config["options"] if o["name"] == "timezone"]
    assert registered["options"][0]["autocomplete"] is True

    berlin = await zones(h, "berl")
    assert berlin[0]["value"] == "Europe/Berlin"
    assert berlin[0]["name"] in ("Europe/Berlin (UTC+01:00)", "Europe/Berlin (UTC+02:00)")
    assert (await zones(h, "new york"))[0]["value"] == "America/New_York"
    assert (await zones(h, "kolk"))[0]["value"] == "Asia/Kolkata"
    first = await zones(h, "")
    assert first[0]["value"] == "UTC"
    assert len(first) <= 25
    asia = await zones(h, "asia/")
    assert len(asia) == 25
    assert all(c["value"].startswith("Asia/") for c in asia)
    for choices in (berlin, first, asia):
        assert all(valid_zone(c["value"]) for c in choices)
    assert await zones(h, "Mars/Olympus_Mons") == []

    # A chosen value is accepted; one typed past autocomplete is still checked.
    await h.grant("enterprise")
    done = await h.invoke("config", sub("timezone", opt("name", berlin[0]["value"])))
    assert done["original"]["content"] == "Time zone set to **Europe/Berlin**."
    for bad in ("Europe/Berlin\x00", "../../etc/passwd", "Mars/Olympus_Mons", "x" * 6000):
        refused = await h.invoke("config", sub("timezone", opt("name", bad)))
        assert refused["original"]["content"].startswith("Give an IANA time zone name"), bad


async def test_channels_offered_are_those_the_member_can_view(staff: Harness) -> None:
    h = staff
    c1, c2, c3 = h.channels[:3]  # general, random (staff only), memes
    u3, u4 = h.users[2], h.users[3]

    owner = {c["value"] for c in await channel_choices(h, "")}
    assert {str(c1), str(c2), str(c3), str(GONE)} <= owner
    assert str(GONE + 1) not in owner  # another server's channel
    assert str(GONE + 2) not in owner  # a category
    assert await channel_choices(h, "rand") == [{"name": "#random", "value": str(c2)}]
    assert await channel_choices(h, str(c2)[:6]) != []

    member = {"user": u3, "permissions": MEMBER_PERMISSIONS}
    seen = {c["value"] for c in await channel_choices(h, "", **member)}
    assert {str(c1), str(c3)} <= seen
    assert str(c2) not in seen  # staff only
    assert str(GONE) not in seen  # gone from the server: Manage Server only
    for typed in ("rand", "random", f"<#{c2}>", str(c2), "#random", "RANDOM"):
        assert await channel_choices(h, typed, **member) == [], typed
    staff_member = {"user": u4, "permissions": MEMBER_PERMISSIONS}
    assert await channel_choices(h, "rand", **staff_member) == [
        {"name": "#random", "value": str(c2)}
    ]

    # A value past autocomplete is still checked: a channel the member cannot view is refused.
    await h.grant("enterprise")
    denied = await h.invoke(
        "channels", [opt("channel", str(c2))], user=u3, permissions=MEMBER_PERMISSIONS
    )
    assert "channels you can view" in denied["original"]["content"]
    foreign = await h.invoke("channels", [opt("channel", str(GONE + 1))])
    assert "not a channel of this server" in foreign["original"]["content"]


async def test_config_channels_completes_the_last_entry_for_admins_only(staff: Harness) -> None:
    h = staff
    c1, c2 = h.channels[:2]

    async def config_choices(typed: str, **member: int) -> list[Json]:
        result = await h.autocomplete(
            "config", sub("channels", typing("channels", typed)), **member
        )
        assert result["invalid"] is None, result
        choices: list[Json] = result["choices"]
        return choices

    first = await config_choices("")
    assert first[0] == {"name": "all channels", "value": "all"}
    assert await config_choices("ALL") == [{"name": "all channels", "value": "all"}]
    second = await config_choices(f"<#{c1}> ran")
    assert second == [{"name": "1 + #random", "value": f"<#{c1}> {c2}"}]
    # Channels already given are not offered again.
    again = {c["value"].split()[-1] for c in await config_choices(f"{c1}, ")}
    assert str(c1) not in again
    assert str(c2) in again
    # A member without Manage Server cannot run /config: nothing is offered.
    u3 = h.users[2]
    assert await config_choices("", user=u3, permissions=MEMBER_PERMISSIONS) == []

    await h.grant("enterprise")
    done = await h.invoke("config", sub("channels", opt("channels", second[0]["value"])))
    assert done["original"]["content"] == f"Tracking 2 channel(s): <#{c1}> <#{c2}>"


HOSTILE: list[object] = [
    "x" * 6000,
    "\x00",
    "ran\x00dom",
    "\x00" * 100,
    "🦄" * 60,
    "\u202e\u043c\u043e\u0434\u202c",  # right-to-left override around Cyrillic
    "%' OR 1=1 --",
    "<#" + "9" * 40 + ">",
    "   ",
    ", , ,",
    "\uff52\uff41\uff4e\uff44\uff4f\uff4d",  # "random" in full-width letters
    "RANDOM",
    "Europe/../../etc/passwd",
    12345,
    None,
    ["random"],
    {"name": "random"},
    1.5,
    True,
]


async def test_hostile_input_gets_a_valid_answer_and_no_hidden_channel(
    staff: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = staff
    c2 = h.channels[1]
    member = {"user": h.users[2], "permissions": MEMBER_PERMISSIONS}
    for typed in HOSTILE:
        answers = [
            await h.autocomplete("config", sub("timezone", typing("name", typed))),
            await h.autocomplete("config", sub("channels", typing("channels", typed))),
            await h.autocomplete("config", sub("channels", typing("channels", typed)), **member),
            await h.autocomplete("channels", [typing("channel", typed)]),
            await h.autocomplete("channels", [typing("channel", typed)], **member),
        ]
        for answer in answers:
            # Answered (not left unanswered after an error), in a form Discord takes.
            assert answer["invalid"] is None, (typed, answer)
            assert answer["response_type"] == 8
            assert len(answer["choices"]) <= 25
        assert all(valid_zone(c["value"]) for c in answers[0]["choices"])
        assert answers[2]["choices"] == []  # /config: Manage Server only
        assert all(str(c2) not in c["value"] for c in answers[4]["choices"]), typed
    # No answer came from an error swallowed on the way.
    assert not [r for r in caplog.records if "autocomplete" in r.getMessage().lower()]
