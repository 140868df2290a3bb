"""The numbers the demo reconciles: the simulator's ledger, Postgres staging, ClickHouse.

The mapping from ledger to rows is the one the bot tests use (tests/bot/expect.py): messages
written by bots are not recorded (``HERWA_BOT_COUNT_BOT_MESSAGES`` is off), deleted messages keep
their ``message_events`` row and add a ``message_deletions`` row, a voice move closes one row and
opens the next (so one ledger session = the rows not closed by a move), and a voice session's
seconds are the bot's receive times, so they may differ by the delivery delay per boundary.
"""

# ruff: noqa: S608 - table names in SQL come from the ETL's static family registry.

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import asyncpg
from clickhouse_connect.driver.asyncclient import AsyncClient

from herwa.etl.families import FAMILIES
from herwa.simulator import Simulator

# Voice seconds are compared within this tolerance: 50 ms per session boundary (join, leave,
# and both sides of every move) plus 0.5 s per guild — loopback delivery and processing delay.
VOICE_BOUNDARY_S = 0.05
VOICE_SLACK_S = 0.5


@dataclass
class Check:
    """One reconciled number: what the ledger says and what a store holds."""

    stage: str
    what: str
    expected: float
    actual: float
    tolerance: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return abs(self.expected - self.actual) <= self.tolerance

    def as_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "what": self.what,
            "expected": self.expected,
            "actual": self.actual,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "note": self.note,
        }


@dataclass
class LedgerCounts:
    messages: int  # recorded by the bot: not written by a bot, deleted ones included
    messages_by_kind: dict[str, int]
    historical_messages: int  # of which only reachable through channel history (backfill)
    edits: int
    deletes: int
    joins: int
    leaves: int
    voice_sessions: int  # closed
    voice_seconds: float
    voice_boundaries: int
    voice_guilds: int
    commands: int
    guilds: int


def ledger_counts(sim: Simulator) -> LedgerCounts:
    led = sim.ledger
    kinds: Counter[str] = Counter()
    historical = 0
    for m in led.messages.values():
        if m.is_bot:
            continue
        kinds[m.kind] += 1
        historical += m.historical
    sessions = 0
    seconds = 0.0
    boundaries = 0
    voice_guilds: set[int] = set()
    for v in led.voice_sessions:
        if v.leave_ms is not None:
            voice_guilds.add(v.guild_id)
            sessions += 1
            seconds += v.seconds
            boundaries += 2 + 2 * v.moves
    return LedgerCounts(
        messages=sum(kinds.values()),
        messages_by_kind=dict(sorted(kinds.items())),
        historical_messages=historical,
        edits=sum(g.edits for g in led.guilds.values()),
        deletes=sum(g.deletes for g in led.guilds.values()),
        joins=sum(g.joins for g in led.guilds.values()),
        leaves=sum(g.leaves for g in led.guilds.values()),
        voice_sessions=sessions,
        voice_seconds=seconds,
        voice_boundaries=boundaries,
        voice_guilds=len(voice_guilds),
        commands=sum(sum(g.commands.values()) for g in led.guilds.values()),
        guilds=len(sim.world.guilds),
    )


@dataclass
class PostgresCounts:
    messages: int
    messages_by_kind: dict[str, int]
    messages_backfilled: int
    edits: int
    deletes: int
    joins: int
    leaves: int
    voice_sessions: int  # not closed by a move
    voice_seconds: float
    snapshot_guilds: int
    rows: dict[str, int]  # staging table → rows


async def postgres_counts(conn: asyncpg.Connection) -> PostgresCounts:
    kinds = {
        r["kind"]: int(r["n"])
        for r in await conn.fetch("SELECT kind, count(*) AS n FROM message_events GROUP BY kind")
    }
    rows = {
        f.staging_table: int(await conn.fetchval(f"SELECT count(*) FROM {f.staging_table}"))
        for f in FAMILIES
    }
    voice = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE close_reason <> 'move') AS n,"
        " coalesce(sum(duration_seconds), 0) AS s FROM voice_sessions"
    )
    members = {
        r["event"]: int(r["n"])
        for r in await conn.fetch("SELECT event, count(*) AS n FROM member_events GROUP BY 1")
    }
    if voice is None:
        raise RuntimeError("an aggregate query returned no row")
    return PostgresCounts(
        messages=sum(kinds.values()),
        messages_by_kind=dict(sorted(kinds.items())),
        messages_backfilled=int(
            await conn.fetchval("SELECT count(*) FROM message_events WHERE source = 'backfill'")
        ),
        edits=rows["message_edits"],
        deletes=rows["message_deletions"],
        joins=members.get("join", 0),
        leaves=members.get("leave", 0),
        voice_sessions=int(voice["n"]),
        voice_seconds=float(voice["s"]),
        snapshot_guilds=int(
            await conn.fetchval("SELECT count(DISTINCT guild_id) FROM member_count_snapshots")
        ),
        rows=rows,
    )


def capture_checks(led: LedgerCounts, pg: PostgresCounts) -> list[Check]:
    """Postgres staging against the ledger, per event family."""
    stage = "capture"
    checks = [
        Check(stage, "messages (all kinds)", led.messages, pg.messages),
        *(
            Check(stage, f"messages: {kind}", n, pg.messages_by_kind.get(kind, 0))
            for kind, n in led.messages_by_kind.items()
        ),
        Check(stage, "message edits", led.edits, pg.edits),
        Check(stage, "message deletions", led.deletes, pg.deletes),
        Check(stage, "member joins", led.joins, pg.joins),
        Check(stage, "member leaves", led.leaves, pg.leaves),
        Check(stage, "voice sessions", led.voice_sessions, pg.voice_sessions),
        Check(
            stage,
            "voice seconds",
            round(led.voice_seconds, 3),
            round(pg.voice_seconds, 3),
            tolerance=round(
                VOICE_BOUNDARY_S * led.voice_boundaries + VOICE_SLACK_S * led.voice_guilds, 3
            ),
            note="bot stamps voice by receive time; live traffic only",
        ),
        Check(stage, "guilds with a member-count snapshot", led.guilds, pg.snapshot_guilds),
    ]
    extra = set(pg.messages_by_kind) - set(led.messages_by_kind)
    checks += [Check(stage, f"messages: {k}", 0, pg.messages_by_kind[k]) for k in sorted(extra)]
    return checks


async def clickhouse_rows(ch: AsyncClient) -> dict[str, int]:
    """Rows per ClickHouse table, after replacement (``FINAL``): what queries see."""
    out: dict[str, int] = {}
    for f in FAMILIES:
        result = await ch.query(f"SELECT count() FROM {f.target_table} FINAL")
        out[f.target_table] = int(result.result_rows[0][0])
    return out


async def command_invocations(ch: AsyncClient) -> int:
    result = await ch.query("SELECT sum(invocations) FROM command_usage FINAL")
    return int(result.result_rows[0][0] or 0)


def asdict_ledger(sim: Simulator) -> dict[str, object]:
    return asdict(ledger_counts(sim))
