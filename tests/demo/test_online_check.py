"""The demo's /online check against its ledger, on the bursts its live phase sends."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from herwa.demo import online_checks
from herwa.simulator import PresenceRecord

GUILD = 1


def _ms(hour: int, minute: int) -> int:
    return int(datetime(2026, 12, 3, hour, minute, tzinfo=UTC).timestamp() * 1000)


def _checked(presences: list[PresenceRecord], reply: str) -> dict[str, tuple[int, int]]:
    """(ledger, reply) per check."""
    sim = cast(Any, SimpleNamespace(ledger=SimpleNamespace(presences=presences)))
    return {c.what: (int(c.expected), int(c.actual)) for c in online_checks(sim, GUILD, reply)}


def test_a_member_online_for_less_than_a_millisecond_counts_in_its_hour() -> None:
    # Two updates of one member in one millisecond: online, then offline. The bot stamps them
    # with its receive times, microseconds apart, and the reply counts the member in hour 08.
    burst = _ms(8, 20)
    presences = [
        PresenceRecord(GUILD, 10, "online", 0, _ms(8, 10), True),
        PresenceRecord(GUILD, 11, "online", 0, burst, True),
        PresenceRecord(GUILD, 11, "offline", 0, burst, True),
    ]
    reply = (
        "Online members by hour, 2026-12-03 to 2026-12-03 (UTC)\n"
        "Peak: 2 members at Thu 2026-12-03 08:00.\n"
        "`Thu 12-03 08:00` 2"
    )
    checked = _checked(presences, reply)
    assert checked["/online peak members"] == (2, 2)
    assert checked["/online members in hour 08:00"] == (2, 2)


def test_an_offline_update_alone_is_no_moment_online() -> None:
    presences = [
        PresenceRecord(GUILD, 10, "online", 0, _ms(8, 10), True),
        PresenceRecord(GUILD, 11, "offline", 0, _ms(8, 20), True),
    ]
    reply = (
        "Online members by hour, 2026-12-03 to 2026-12-03 (UTC)\n"
        "Peak: 1 members at Thu 2026-12-03 08:00.\n"
        "`Thu 12-03 08:00` 1"
    )
    assert _checked(presences, reply)["/online members in hour 08:00"] == (1, 1)
