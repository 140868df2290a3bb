"""Every slash-command option, fuzzed: never an unhandled exception, always a clear answer.

The parsers are fuzzed directly with hypothesis (any string, any integer); then Herwa's own
commands are invoked through the simulator the way Discord builds interactions from the
synced registration (random valid invocations of every command and subcommand) and with
hostile text in every string option. An error the member must fix is an ephemeral sentence
that does not echo the input; "Something went wrong" (an unhandled exception) never appears.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herwa.bot.commands import (
    OptionError,
    bounded_int,
    date_range,
    parse_channel_id,
    parse_channel_ids,
    parse_timezone,
)
from herwa.simulator import (
    EVERYONE_PERMISSIONS,
    STRING,
    SUB_COMMAND,
    SUB_COMMAND_GROUP,
    build_invocation,
)
from tests.commands.conftest import LONG_HISTORY, Harness, is_ephemeral, text_of

UNHANDLED = "Something went wrong"
HOSTILE = [
    "",
    " ",
    "\x00",
    "\ufeff\u200b\U0001f600",  # (a lone surrogate cannot travel in JSON: fuzzed above)
    "'; DROP TABLE guilds; --",
    "0001-01-01",
    "9999-12-31",
    "2024-02-30",
    "٢٠٢٤-٠٣-٣١",
    "<#99999999999999999999>",
    "1" * 200,
    "Europe/../../etc/passwd",
    "x" * 6000,
    "@everyone",
]
NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
BATCH = 8
# What st.text() leaves out: a lone surrogate, and digits str.isdigit() accepts besides 0-9.
ODD = ["\ud800", "\udfff-01-01", "٢٠٢٤-٠٣-٣١", "<#١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧>"]


def _check(exc: OptionError, value: str) -> None:
    message = str(exc)
    assert message
    assert len(value) < 3 or value not in message


@settings(max_examples=300, deadline=None)
@given(
    end=st.none() | st.text(max_size=30) | st.dates().map(str) | st.sampled_from(ODD),
    days=st.integers(min_value=-(2**64), max_value=2**64),
    history=st.none() | st.integers(min_value=0, max_value=10**6),
    tz=st.sampled_from(["UTC", "Pacific/Kiritimati", "Etc/GMT+12"]),
)
def test_date_range_answers_or_explains(
    end: str | None, days: int, history: int | None, tz: str
) -> None:
    try:
        span = date_range(
            days=days, end=end, tz=tz, now=NOW, history_days=history, max_days=3650, tier="pro"
        )
    except OptionError as exc:
        _check(exc, end or "")
        return
    assert 1 <= span.days <= 3650
    assert span.start_utc < span.end_utc


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(max_size=300) | st.sampled_from(ODD),
    known=st.sets(st.integers(1, 2**63 - 1), max_size=5),
)
def test_channel_and_timezone_parsers_answer_or_explain(value: str, known: set[int]) -> None:
    for parse in (
        lambda: parse_channel_ids(value, known),
        lambda: parse_channel_id(value, known),
        lambda: parse_timezone(value),
    ):
        try:
            parse()
        except OptionError as exc:
            _check(exc, value)


@given(value=st.integers(), low=st.integers(-100, 0), high=st.integers(0, 100))
def test_bounded_int_answers_or_explains(value: int, low: int, high: int) -> None:
    if low <= value <= high:
        assert bounded_int(value, "n", low, high) == value
    else:
        with pytest.raises(OptionError, match=f"between {low} and {high}"):
            bounded_int(value, "n", low, high)


@pytest.mark.parametrize("end", ["0001-01-01", "0001-01-02"])
def test_an_end_at_the_start_of_the_calendar_is_explained(end: str) -> None:
    # The first day of the range would fall before year 1: an OverflowError before.
    with pytest.raises(OptionError):
        date_range(days=7, end=end, tz="UTC", now=NOW, history_days=None, max_days=50, tier="pro")


async def _answered(records: list[Any]) -> None:
    await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in records)), 60)


def _texts(h: Harness, records: list[Any]) -> list[str]:
    return [text_of(r.result(h.sim.interactions.files)) for r in records]


async def test_every_command_as_discord_builds_it_from_the_registration(
    harness: Harness,
) -> None:
    h = harness
    for gid in (h.guild, h.other):
        await h.grant("enterprise", LONG_HISTORY, guild=gid)
    registered = {c["name"]: c for c in h.sim.app.global_commands}
    assert {"config", "privacy"} <= set(registered)
    rng = random.Random(5)
    guild = h.sim.world.guilds[h.guild]
    records = []
    for i, (name, command) in enumerate(sorted(registered.items()) * 6):
        invocation = build_invocation(command, guild, rng)
        assert invocation is not None, name
        if name == "privacy" and "delete" in invocation.options[0]["name"]:
            continue  # an erasure would empty the data the other invocations read
        records.append(
            h.sim.activity.invoke_command(
                h.guild,
                h.channels[0],
                h.users[1 + i % (len(h.users) - 1)],
                name,
                invocation.options,
                at_ms=h.sim.now_ms(),
                permissions=EVERYONE_PERMISSIONS,
                resolved=invocation.resolved,
            )
        )
        if len(records) % BATCH == 0:  # a member's pace, not a flood of the test's Redis pool
            await _answered(records[-BATCH:])
    # And the simulator's own random traffic.
    for _ in range(40 // BATCH):
        before = set(h.sim.interactions.by_id)
        h.sim.step(BATCH, family="command")
        records += [r for i, r in h.sim.interactions.by_id.items() if i not in before]
        await _answered(records[-BATCH:])
    await _answered(records)
    texts = _texts(h, records)
    assert all(t and UNHANDLED not in t for t in texts), [t for t in texts if UNHANDLED in t]


async def test_hostile_text_in_every_string_option_gets_a_clear_answer(
    harness: Harness,
) -> None:
    h = harness
    await h.grant("enterprise", LONG_HISTORY)
    records = []
    i = 0
    for command in h.sim.app.global_commands:
        for path, strings in _string_options(command):
            for value in HOSTILE:
                options = [{"type": STRING, "name": s, "value": value} for s in strings]
                for kind, sub in reversed(path):
                    options = [{"type": kind, "name": sub, "options": options}]
                i += 1
                records.append(
                    h.sim.activity.invoke_command(
                        h.guild,
                        h.channels[0],
                        h.users[i % len(h.users)],
                        command["name"],
                        options,
                        at_ms=h.sim.now_ms(),
                    )
                )
                if len(records) % BATCH == 0:
                    await _answered(records[-BATCH:])
    assert len(records) >= 8 * len(HOSTILE)
    await _answered(records)
    texts = _texts(h, records)
    for record, text in zip(records, texts, strict=True):
        assert text, record.name
        assert UNHANDLED not in text, (record.name, record.options, text)
        result = record.result(h.sim.interactions.files)
        if "must" in text or "Give an IANA" in text or "not a real" in text:
            assert is_ephemeral(result)


def _string_options(command: dict[str, Any]) -> list[tuple[list[tuple[int, str]], list[str]]]:
    """(path of subcommand groups/subcommands, names of its string options), per leaf."""
    out: list[tuple[list[tuple[int, str]], list[str]]] = []

    def walk(node: dict[str, Any], path: list[tuple[int, str]]) -> None:
        options = node.get("options") or []
        subs = [o for o in options if o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)]
        for sub in subs:
            walk(sub, [*path, (sub["type"], sub["name"])])
        strings = [o["name"] for o in options if o["type"] == STRING]
        if strings and not subs:
            out.append((path, strings))

    walk(command, [])
    return out
