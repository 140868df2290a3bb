"""Compare what Postgres holds with the simulator's ground-truth ledger."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from herwa.simulator import Simulator
from tests.bot.conftest import pg, wait_for

# Voice durations are the bot's receive times: each session boundary may be late by the
# event's delivery + processing delay on loopback. Allowed: 50 ms per boundary plus 0.5 s.
VOICE_BOUNDARY_S = 0.05
VOICE_SLACK_S = 0.5


def expected_messages(
    sim: Simulator, *, content: bool = True, deleted: bool = True
) -> Counter[tuple[int, str]]:
    """(guild, kind) → count of non-bot messages (bots are excluded by default)."""
    out: Counter[tuple[int, str]] = Counter()
    for m in sim.ledger.messages.values():
        if m.is_bot or (m.deleted and not deleted):
            continue
        kind = m.kind if content or m.kind not in ("attachment", "embed") else "text"
        out[(m.guild_id, kind)] += 1
    return out


async def actual_messages(dsn: str) -> Counter[tuple[int, str]]:
    rows = await pg(
        dsn, "SELECT guild_id, kind, count(*) AS n FROM message_events GROUP BY guild_id, kind"
    )
    return Counter({(r["guild_id"], r["kind"]): r["n"] for r in rows})


def expected_family_counts(sim: Simulator) -> dict[str, Counter[int]]:
    led = sim.ledger
    out: dict[str, Counter[int]] = {
        "edits": Counter(),
        "deletes": Counter(),
        "joins": Counter(),
        "leaves": Counter(),
        "voice_sessions": Counter(),
    }
    for gid, g in led.guilds.items():
        out["edits"][gid] = g.edits
        out["deletes"][gid] = g.deletes
        out["joins"][gid] = g.joins
        out["leaves"][gid] = g.leaves
    for v in led.voice_sessions:
        if v.leave_ms is not None:
            out["voice_sessions"][v.guild_id] += 1
    return {k: +v for k, v in out.items()}


async def actual_family_counts(dsn: str) -> dict[str, Counter[int]]:
    queries = {
        "edits": "SELECT guild_id, count(*) AS n FROM message_edits GROUP BY 1",
        "deletes": "SELECT guild_id, count(*) AS n FROM message_deletions GROUP BY 1",
        "joins": "SELECT guild_id, count(*) AS n FROM member_events WHERE event='join' GROUP BY 1",
        "leaves": "SELECT guild_id, count(*) AS n FROM member_events WHERE event='leave' "
        "GROUP BY 1",
        # A move closes one row and opens the next: one ledger session = the rows not
        # closed by a move.
        "voice_sessions": "SELECT guild_id, count(*) AS n FROM voice_sessions "
        "WHERE close_reason <> 'move' GROUP BY 1",
    }
    out = {}
    for name, q in queries.items():
        out[name] = +Counter({r["guild_id"]: r["n"] for r in await pg(dsn, q)})
    return out


Reaction = tuple[int, int, int, int, str, str]  # guild, channel, message, member, emoji, event


def expected_reactions(sim: Simulator) -> Counter[Reaction]:
    """Every reaction added or removed, as the bot records it (a thread's parent channel)."""
    return Counter(
        (r.guild_id, r.channel_id, r.message_id, r.user_id, r.emoji, r.event)
        for r in sim.ledger.reactions
    )


async def actual_reactions(dsn: str) -> Counter[Reaction]:
    rows = await pg(
        dsn,
        "SELECT guild_id, channel_id, message_id, user_id, emoji, event FROM message_reactions",
    )
    return Counter(
        (r["guild_id"], r["channel_id"], r["message_id"], r["user_id"], r["emoji"], r["event"])
        for r in rows
    )


def expected_voice(sim: Simulator) -> dict[int, tuple[float, int]]:
    """guild → (closed seconds, boundaries incl. moves)."""
    out: dict[int, tuple[float, int]] = {}
    for v in sim.ledger.voice_sessions:
        if v.leave_ms is None:
            continue
        secs, n = out.get(v.guild_id, (0.0, 0))
        out[v.guild_id] = (secs + v.seconds, n + 2 + 2 * v.moves)
    return out


async def actual_voice(dsn: str) -> dict[int, float]:
    rows = await pg(
        dsn, "SELECT guild_id, sum(duration_seconds) AS s FROM voice_sessions GROUP BY 1"
    )
    return {r["guild_id"]: float(r["s"]) for r in rows}


PresenceKey = tuple[int, int, str, int]  # guild, member, status, activity-type bits


async def actual_presence(dsn: str) -> Counter[PresenceKey]:
    rows = await pg(
        dsn,
        "SELECT guild_id, user_id, status, activity_types, count(*) AS n FROM presence_events"
        " GROUP BY 1, 2, 3, 4",
    )
    return Counter(
        {(r["guild_id"], r["user_id"], r["status"], r["activity_types"]): r["n"] for r in rows}
    )


async def compare_all(
    sim: Simulator,
    dsn: str,
    *,
    content: bool,
    voice_seconds: bool = True,
    presence: Iterable[int] = (),
) -> list[str]:
    """Human-readable differences; empty when Postgres equals the ledger. Without the
    MESSAGE_CONTENT intent attachment and embed messages are expected as ``text``.
    ``presence``: the guilds whose presence transitions the bots record (none by default)."""
    problems: list[str] = []
    exp_p, act_p = sim.ledger.presence_rows(presence), await actual_presence(dsn)
    if exp_p != act_p:
        problems.append(f"presence differs: missing={exp_p - act_p} extra={act_p - exp_p}")
    exp, act = expected_messages(sim, content=content), await actual_messages(dsn)
    if exp != act:
        problems.append(f"messages differ: missing={exp - act} extra={act - exp}")
    exp_f, act_f = expected_family_counts(sim), await actual_family_counts(dsn)
    for name in exp_f:
        if exp_f[name] != act_f[name]:
            problems.append(f"{name}: expected {dict(exp_f[name])} got {dict(act_f[name])}")
    exp_r, act_r = expected_reactions(sim), await actual_reactions(dsn)
    if exp_r != act_r:
        problems.append(f"reactions differ: missing={exp_r - act_r} extra={act_r - exp_r}")
    if not voice_seconds:
        return problems
    ev, av = expected_voice(sim), await actual_voice(dsn)
    for gid, (secs, boundaries) in ev.items():
        got = av.get(gid, 0.0)
        if abs(got - secs) > VOICE_BOUNDARY_S * boundaries + VOICE_SLACK_S:
            problems.append(f"voice seconds guild {gid}: expected {secs:.3f} got {got:.3f}")
    return problems


def summary(sim: Simulator) -> dict[str, Any]:
    return {k: v for k, v in sim.ledger.summary().items() if k != "guilds"}


async def settle(
    sim: Simulator,
    dsn: str,
    *,
    content: bool,
    timeout: float = 30,
    voice_seconds: bool = True,
    diagnose: Callable[[], Awaitable[str]] | None = None,
    presence: Iterable[int] = (),
) -> float:
    """End every voice session, then wait until Postgres equals the ledger for every family;
    returns the seconds it took. On time-out the differences (and ``diagnose()``) are raised."""
    sim.end_voice_sessions()
    problems: list[str] = []

    async def equal() -> bool:
        nonlocal problems
        problems = await compare_all(
            sim, dsn, content=content, voice_seconds=voice_seconds, presence=presence
        )
        return not problems

    try:
        return await wait_for(equal, timeout, "Postgres to equal the ledger", interval=0.25)
    except AssertionError:
        detail = "\n".join(problems)
        if diagnose is not None:
            detail += "\n" + await diagnose()
        raise AssertionError(detail) from None
