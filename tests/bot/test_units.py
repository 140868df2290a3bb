"""Pure parts: message kinds with and without MESSAGE_CONTENT, rendezvous assignment."""

from __future__ import annotations

import pytest

from herwa.bot import channel_types
from herwa.bot.capture import BadPayload, message_kind, message_row, snowflake
from herwa.bot.directory import Directory
from herwa.bot.guild_settings import GuildConfig
from herwa.bot.sharding import assigned_shards, rendezvous_owner


def test_kinds_with_and_without_content() -> None:
    base = {"type": 0, "attachments": [], "embeds": []}
    assert message_kind({**base, "attachments": [{"id": "1"}]}) == "attachment"
    assert message_kind({**base, "embeds": [{"type": "link"}]}) == "embed"
    assert message_kind({**base, "sticker_items": [{"id": "1"}]}) == "sticker"
    assert message_kind({**base, "type": 19}) == "reply"
    assert message_kind({**base, "type": 7}) == "system"
    # Without the intent the same payloads fold into text; stickers and replies survive.
    assert message_kind({**base, "attachments": [{"id": "1"}]}, content=False) == "text"
    assert message_kind({**base, "sticker_items": [{"id": "1"}]}, content=False) == "sticker"


def test_thread_messages_map_to_parent_and_allow_list_filters() -> None:
    d = Directory(GuildConfig())
    d.add_channel(1, {"id": "20", "type": 11, "parent_id": "10"})
    msg = {"id": str(1 << 40), "guild_id": "1", "channel_id": "20", "author": {"id": "5"}}
    row = message_row(msg, d)
    assert row is not None
    assert (row[2], row[3]) == (10, 20)
    d.configs[1] = GuildConfig(tracked_channel_ids=(11,))
    assert message_row(msg, d) is None
    bot = {**msg, "author": {"id": "6", "bot": True}}
    d.configs[1] = GuildConfig()
    assert message_row(bot, d) is None  # bots excluded by default
    d.configs[1] = GuildConfig(count_bot_messages=True)
    assert message_row(bot, d) is not None


def test_channel_kinds_read_back_as_a_type_of_the_same_kind() -> None:
    # What a RESUMEd shard rebuilds from ``channels`` must classify each channel as the
    # GUILD_CREATE did: a thread stays a thread, a stage a stage, text and news are read.
    written = {t: channel_types.kind_of(t) for t in (0, 2, 4, 5, 10, 11, 12, 13, 15, 16)}
    assert written == {
        0: "text",
        2: "voice",
        4: "category",
        5: "news",
        10: "thread",
        11: "thread",
        12: "thread",
        13: "stage",
        15: "forum",
        16: "other",
    }
    for channel_type, kind in written.items():
        back = channel_types.type_of(kind)
        assert channel_types.kind_of(back) == kind or kind == channel_types.OTHER
        assert (back in channel_types.THREADS) == (channel_type in channel_types.THREADS)
    assert channel_types.type_of("thread") == channel_types.PUBLIC_THREAD
    assert channel_types.type_of("other") == channel_types.TEXT


def test_rendezvous_moves_only_the_shards_that_must_move() -> None:
    shards = 64
    before = {s: rendezvous_owner(["a", "b"], s) for s in range(shards)}
    after = {s: rendezvous_owner(["a", "b", "c"], s) for s in range(shards)}
    moved = [s for s in range(shards) if before[s] != after[s]]
    assert all(after[s] == "c" for s in moved)  # only shards the new pod takes move
    assert 10 <= len(moved) <= 35
    parts = [assigned_shards(["a", "b", "c"], m, shards) for m in "abc"]
    assert set().union(*parts) == set(range(shards))
    assert sum(len(p) for p in parts) == shards


def test_snowflake_reads_only_ids_a_bigint_holds() -> None:
    assert snowflake("1", "id") == 1
    assert snowflake(str(2**63 - 1), "id") == 2**63 - 1
    assert snowflake(7, "id") == 7
    for bad in ("", "0", "-1", "+1", " 1", "1 ", "1_0", "\u0661", "\uff11", "9" * 19, "9" * 20):
        with pytest.raises(BadPayload):
            snowflake(bad, "id")
    for bad_type in (True, 1.0, None, b"1", 0, 2**63):
        with pytest.raises(BadPayload):
            snowflake(bad_type, "id")
