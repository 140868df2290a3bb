"""Presence capture without servers: which updates are transitions, which servers are recorded,
and how much a shard's presence state holds."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime

from herwa.bot.capture import presence_row
from herwa.bot.presence import PresenceGrants, PresenceTransitions
from herwa.entitlements import FeatureHolders

NOW = datetime(2025, 6, 1, tzinfo=UTC)
G, OTHER, DENIED = 10, 20, 30


def update(user: int, status: str, *types: int, guild: int = G) -> dict[str, object]:
    return {
        "user": {"id": str(user)},
        "guild_id": str(guild),
        "status": status,
        "activities": [{"type": t, "name": "x"} for t in types],
        "client_status": {"desktop": status},
    }


def recorded(t: PresenceTransitions, d: dict[str, object]) -> bool:
    row = presence_row(d, NOW)
    assert row is not None
    return t.changed(row)


def test_only_status_or_activity_type_changes_are_transitions() -> None:
    t = PresenceTransitions(PresenceGrants(True, 100, FeatureHolders(granted=frozenset({G}))))
    assert recorded(t, update(1, "online"))
    assert not recorded(t, update(1, "online"))  # a new song: same status, same types
    assert recorded(t, update(1, "online", 2))  # started listening
    assert not recorded(t, update(1, "online", 2))
    assert recorded(t, update(1, "online", 2, 0))  # and playing
    assert recorded(t, update(1, "dnd", 2, 0))
    assert recorded(t, update(1, "offline"))
    assert t.held == 0  # offline members are not kept
    # Unknown is taken for offline: an offline update of an unknown member is recorded.
    assert recorded(t, update(1, "offline"))


def test_only_granted_servers_are_recorded() -> None:
    grants = PresenceGrants(
        True, 100, FeatureHolders(granted=frozenset({G}), denied=frozenset({DENIED}))
    )
    t = PresenceTransitions(grants)
    assert recorded(t, update(1, "online", guild=G))
    assert not recorded(t, update(1, "online", guild=OTHER))
    # The default tier grants presence: every server without a subscription, not a denied one.
    grants.holders = replace(grants.holders, default=True)
    assert recorded(t, update(1, "online", guild=OTHER))
    assert not recorded(t, update(1, "online", guild=DENIED))
    # A pod started without the intent records nothing, whatever the tiers say.
    off = PresenceTransitions(
        PresenceGrants(False, 100, FeatureHolders(granted=frozenset({G}), default=True))
    )
    assert not recorded(off, update(2, "online"))


def test_state_is_bounded_per_server_and_forgotten() -> None:
    t = PresenceTransitions(PresenceGrants(True, 3, FeatureHolders(default=True)))
    for user in range(1, 6):
        assert recorded(t, update(user, "online"))
    assert t.held == 3  # the three most recently changed
    assert not recorded(t, update(5, "online"))
    assert recorded(t, update(1, "online"))  # forgotten: one repeated row, no lost change
    assert recorded(t, update(7, "idle", guild=OTHER))
    t.forget((G,))
    assert t.held == 1
    t.forget()
    assert t.held == 0


def test_unreadable_activities_are_left_out_and_bad_status_yields_nothing() -> None:
    d = update(1, "idle", 3)
    d["activities"] = [{"type": 3}, {"type": 9}, {"type": True}, "x", {"type": "2"}]
    assert presence_row(d, NOW) == (G, 1, NOW, "idle", 1 << 3)
    assert presence_row({**update(1, "invisible")}, NOW) is None
    assert presence_row({**update(1, "online"), "activities": {"type": 1}}, NOW) is None
    assert presence_row({**update(1, "online"), "user": None}, NOW) is None


def test_memory_held_per_member() -> None:
    members = 10_000
    grants = PresenceGrants(True, members, FeatureHolders(default=True))
    t = PresenceTransitions(grants)
    base = 10**17
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(members):  # the member ids are made here, as capture parses them
        t.changed((G, base + i, NOW, "online", 1 << (i % 6)))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert t.held == members
    per_member = held / members
    print(f"presence state: {held / 1024:.0f} KiB for {members} members, {per_member:.0f} B each")
    assert per_member < 200
