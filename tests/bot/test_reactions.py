"""Reactions end to end: two `herwa bot` processes capture the simulator's reactions (added and
taken back, unicode and custom emoji, in channels and threads) into Postgres, the ETL loads them
into ClickHouse, and /reactions and /overview answer from there: every step equal to the ledger.
Payloads capture cannot read, and the events it only counts, are counted and store nothing."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest

from herwa import platform
from herwa.bot.capture import reaction_add_row, reaction_remove_row
from herwa.bot.directory import Directory
from herwa.bot.guild_settings import GuildConfig
from herwa.etl.runner import RunOptions, run_once
from herwa.simulator import GUILD_MESSAGE_REACTIONS, Simulator
from herwa.stores import clickhouse_url_client
from tests.bot.conftest import Fleet, split_names, wait_for
from tests.bot.expect import Reaction, expected_reactions, settle
from tests.commands.conftest import fields_of, text_of

pytestmark = pytest.mark.slow

# Payloads Discord should never send; each is counted under (event, reason), none is stored.
UNREADABLE = (
    ("MESSAGE_REACTION_ADD", {"emoji": None}, "emoji"),
    ("MESSAGE_REACTION_ADD", {"emoji": {"id": None, "name": ""}}, "emoji_name"),
    ("MESSAGE_REACTION_ADD", {"emoji": {"id": "12x", "name": "x"}}, "emoji_id"),
    ("MESSAGE_REACTION_REMOVE", {"user_id": "-5"}, "user_id"),
    ("MESSAGE_REACTION_REMOVE", {"message_id": ["1"]}, "message_id"),
)


async def test_reactions_from_gateway_to_commands_equal_the_ledger(
    fleet: Fleet, sim: Simulator
) -> None:
    for name in split_names(2):
        await fleet.start(name)
    await wait_for(fleet.all_connected, 30, "all shards connected once")
    dsn = fleet.endpoints.postgres_dsn

    # Messages to react to, some in threads; then reactions, deletions among them.
    sim.step(300, family="message")
    sim.step(16, family="thread")
    sim.step(300, family="message")
    sim.step(800, family="reaction")
    sim.step(15, family="delete")
    sim.step(300, family="reaction")
    _unreadable_and_uncounted(sim)
    await settle(sim, dsn, content=False, timeout=30)
    led = sim.ledger
    added = sum(r.event == "add" for r in led.reactions)
    removed = len(led.reactions) - added
    assert added > 500, added
    assert removed > 100, removed
    assert any(not r.emoji.isdecimal() for r in led.reactions)  # unicode
    assert any(r.emoji.isdecimal() for r in led.reactions)  # custom
    threaded = {m.id for m in led.messages.values() if m.thread_parent_id is not None}
    assert any(r.message_id in threaded for r in led.reactions)

    rejected = Counter[tuple[str, str]]()
    counted = Counter[str]()
    for bot in fleet.bots.values():
        text = await bot.metrics()
        for event, _, reason in UNREADABLE:
            rejected[(event, reason)] += int(
                _sample(text, "herwa_bot_payload_rejections_total", event=event, reason=reason)
            )
        for event in ("MESSAGE_REACTION_REMOVE_ALL", "MESSAGE_REACTION_REMOVE_EMOJI"):
            counted[event] += int(_sample(text, "herwa_bot_gateway_events_total", type=event))
    assert rejected == Counter({(e, r): 1 for e, _, r in UNREADABLE})
    assert counted == Counter(
        {"MESSAGE_REACTION_REMOVE_ALL": 1, "MESSAGE_REACTION_REMOVE_EMOJI": 1}
    )

    # The ETL: ClickHouse holds exactly the ledger's reactions.
    result = await run_once(dsn, fleet.endpoints.clickhouse_url, None, RunOptions())
    assert result.outcome == "caught_up", result.error
    assert result.stats.rows_moved["message_reactions"] == len(led.reactions)
    assert await _clickhouse_reactions(fleet.endpoints.clickhouse_url) == expected_reactions(sim)

    # The commands, in the guild with the most reactions, as its owner (who sees every channel).
    guild = Counter(r.guild_id for r in led.reactions).most_common(1)[0][0]
    await _subscribe(dsn, guild, "pro")
    await wait_for(lambda: _published(sim), 15, "global commands synced")
    mine = [r for r in led.reactions if r.guild_id == guild]
    adds = [r for r in mine if r.event == "add"]

    overview = await sim.invoke_command(guild, "overview", timeout=20)
    assert fields_of(overview)["Reactions"] == f"{len(adds):,}"

    reply = await sim.invoke_command(guild, "reactions", timeout=20)
    text = text_of(reply)
    reactors = len({r.user_id for r in adds})
    removals = len(mine) - len(adds)
    assert f"{len(adds):,} reactions added by {reactors:,} members, {removals:,} removed." in text
    live = {m.id for m in led.messages.values() if not m.deleted}
    per_message = Counter(r.message_id for r in adds if r.message_id in live)
    want = sorted(per_message.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    got = [
        (int(m[1]), int(m[2].replace(",", "")))
        for m in re.finditer(r"/(\d+) — ([\d,]+) reactions from", text)
    ]
    assert got == want
    per_emoji = Counter(r.emoji for r in adds)
    top = sorted(per_emoji.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    shown = fields_of(reply)["Top emoji"].splitlines()
    assert [int(line.rsplit(" — ", 1)[1].replace(",", "")) for line in shown] == [n for _, n in top]
    print(
        f"reactions: {added} added, {removed} removed; Postgres and ClickHouse rows equal to the"
        f" ledger ({len(led.reactions)} each); guild {guild}: {len(adds)} added,"
        f" {len(want)} messages and {len(top)} emoji ranked as the ledger ranks them"
    )


def test_capture_reads_reactions_and_refuses_what_it_cannot_read() -> None:
    directory = Directory(GuildConfig())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = {"guild_id": "1", "channel_id": "2", "message_id": "3", "user_id": "4"}
    unicode = {**base, "emoji": {"id": None, "name": "👍🏽"}, "member": {"user": {"id": "4"}}}
    assert reaction_add_row(unicode, directory, now) == (1, 2, 3, 4, "👍🏽", None, "add", now)
    custom = {**base, "emoji": {"id": "99", "name": "party\x00"}}
    assert reaction_remove_row(custom, directory, now) == (1, 2, 3, 4, "99", "party", "remove", now)
    assert reaction_add_row({**base, "guild_id": None, "emoji": {}}, directory, now) is None
    for _, broken, _ in UNREADABLE:
        assert reaction_add_row({**base, **broken}, directory, now) is None
        assert reaction_remove_row({**base, "emoji": "👍", **broken}, directory, now) is None


def _unreadable_and_uncounted(sim: Simulator) -> None:
    """Sends the unreadable payloads, and a moderator's clear-all and clear-emoji."""
    guild = next(iter(sim.world.guilds.values()))
    mid = next(m.id for m in sim.ledger.messages.values() if m.guild_id == guild.id)
    channel = sim.ledger.messages[mid].channel_id
    member = next(uid for uid in guild.members if uid != sim.world.bot_user.id)
    base = {
        "guild_id": str(guild.id),
        "channel_id": str(channel),
        "message_id": str(mid),
        "user_id": str(member),
        "emoji": {"id": None, "name": "👍"},
    }
    sends = [(event, {**base, **broken}) for event, broken, _ in UNREADABLE]
    sends.append(("MESSAGE_REACTION_REMOVE_ALL", {k: base[k] for k in list(base)[:3]}))
    sends.append(("MESSAGE_REACTION_REMOVE_EMOJI", {**base, "user_id": None}))
    for event, d in sends:
        sim.gateway.dispatch(event, guild.id, d, intent=GUILD_MESSAGE_REACTIONS, key=mid)


def _sample(text: str, metric: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _clickhouse_reactions(url: str) -> Counter[Reaction]:
    client = await clickhouse_url_client(url)
    try:
        result = await client.query(
            "SELECT guild_id, channel_id, message_id, user_id, emoji, toString(event)"
            " FROM message_reactions FINAL"
        )
    finally:
        await client.close()
    return Counter(
        (int(g), int(c), int(m), int(u), str(e), str(ev))
        for g, c, m, u, e, ev in result.result_rows
    )


async def _subscribe(dsn: str, guild: int, tier: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await platform.seed(conn, platform.load())
        features = await conn.fetchval(
            "SELECT array_agg(feature ORDER BY feature) FROM tier_features WHERE tier = $1", tier
        )
        await conn.execute(
            "INSERT INTO entitlements (guild_id, tier, features, quotas, source_namespace,"
            " source_name, source_uid) VALUES ($1, $2, $3, $4::jsonb, 'ns', 'sub', 'uid')",
            guild,
            tier,
            features,
            json.dumps({"queries_per_month": 500, "history_days": 365}),
        )
    finally:
        await conn.close()


async def _published(sim: Simulator) -> bool:
    return sim.app.find_command("reactions", None) is not None
