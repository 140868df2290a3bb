"""Where a new shard's held events go on past the previous fleet's anchor (resume_index)."""

from __future__ import annotations

from herwa.bot.event_order import fingerprint, guild_of, resume_index


def test_reshard_anchor_found_after_the_events_both_fleets_saw() -> None:
    # The new session began at "c"; the old fleet recorded up to "e".
    assert resume_index(["c", "d", "e", "f", "g"], ["a", "b", "c", "d", "e"]) == 3


def test_reshard_anchor_repeated_event_is_placed_by_what_precedes_it() -> None:
    # A member muting twice: "m" occurs twice; the tail's context picks the second one.
    seen = ["m", "x", "y", "m", "z"]
    assert resume_index(seen, ["x", "y", "m"]) == 4
    # Preceded by something else at the second place: only the first (at the start) fits.
    assert resume_index(seen, ["q", "m"]) == 1
    # Context running off the start of what was seen is no contradiction.
    assert resume_index(["m", "z"], ["x", "y", "m"]) == 1


def test_reshard_anchor_missing_when_the_new_shard_reads_behind() -> None:
    assert resume_index(["a", "b"], ["a", "b", "c"]) is None
    assert resume_index([], ["a"]) is None


def test_reshard_fingerprint_is_the_payload_not_its_key_order() -> None:
    a = {"guild_id": "1", "user_id": "2", "channel_id": None}
    b = {"channel_id": None, "user_id": "2", "guild_id": "1"}
    assert fingerprint("VOICE_STATE_UPDATE", a) == fingerprint("VOICE_STATE_UPDATE", b)
    assert fingerprint("VOICE_STATE_UPDATE", a) != fingerprint("GUILD_MEMBER_REMOVE", a)
    assert guild_of("GUILD_CREATE", {"id": "5"}) == 5
    assert guild_of("MESSAGE_CREATE", {"guild_id": "x"}) is None
