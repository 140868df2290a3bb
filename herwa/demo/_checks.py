"""The numbers the demo reconciles: the simulator's ledger, Postgres staging, ClickHouse, and
what the slash commands answered.

The mapping from ledger to rows is the one the bot tests use (tests/bot/expect.py): messages
written by bots are not recorded (``HERWA_BOT_COUNT_BOT_MESSAGES`` is off), deleted messages keep
their ``message_events`` row and add a ``message_deletions`` row, a voice move closes one row and
opens the next (so one ledger session = the rows not closed by a move), and a voice session's
seconds are the bot's receive times, so they may differ by the delivery delay per boundary.
"""

# ruff: noqa: S608 - table names in SQL come from the ETL's static family registry.

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from clickhouse_connect.driver.asyncclient import AsyncClient

from herwa import platform
from herwa.bot.commands.retention import NOT_YET
from herwa.etl.families import FAMILIES
from herwa.simulator import MemberEventRecord, MessageRecord, Simulator

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
    reactions_added: int = 0
    reactions_removed: int = 0


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
        reactions_added=sum(g.reactions_added for g in led.guilds.values()),
        reactions_removed=sum(g.reactions_removed for g in led.guilds.values()),
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
    reactions_added: int = 0
    reactions_removed: int = 0


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
    reactions = {
        r["event"]: int(r["n"])
        for r in await conn.fetch("SELECT event, count(*) AS n FROM message_reactions GROUP BY 1")
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
        reactions_added=reactions.get("add", 0),
        reactions_removed=reactions.get("remove", 0),
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
        Check(stage, "reactions added", led.reactions_added, pg.reactions_added),
        Check(stage, "reactions removed", led.reactions_removed, pg.reactions_removed),
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


# -- what the slash commands answered, against the ledger ---------------------------------------
#
# Each reply states its range as "YYYY-MM-DD to YYYY-MM-DD (zone)"; the expected numbers are
# computed from the ledger over exactly that range, the way the analytics define them: messages
# not written by a bot and not deleted; voice seconds clipped to the range; joins and leaves of
# members that are not bots; a retention cohort is the members whose first join lies in the
# range, by the local week (Monday) of that join, active in week N when they wrote a message that
# still exists in the N-th local week after it.

_LABEL = re.compile(r"(\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2}) \(([^)\s]+)\)")
_HEATMAP = re.compile(
    r"^([\d,]+) messages\. Busiest hour: .* with ([\d,]+) messages\. "
    r"Busiest day: \w+ with ([\d,]+)\.",
    re.MULTILINE,
)
_COHORT = re.compile(
    r"^(\d{4}-\d{2}-\d{2}): (\d+) joined; active (.*?)(?:; in voice (.*))?$", re.MULTILINE
)
_GROWTH = re.compile(r"^([\d,]+) joins, ([\d,]+) leaves, net ([+-]?[\d,]+)\.", re.MULTILINE)
_MEMBERS = re.compile(r"Members: ([\d,]+) on (\S+), ([\d,]+) on (\S+)\.")
_VOICE_TIME = re.compile(r"^(?:(\d+) h )?(\d+) min$")


class ReplyUnreadable(ValueError):
    """A reply lacks a number the demo checks: the check fails with this message."""


@dataclass(frozen=True)
class Window:
    """A reply's range: whole local days ``first``..``last`` in ``tz``, as UTC milliseconds."""

    first: date
    last: date
    tz: str

    @property
    def start_ms(self) -> int:
        return int(datetime.combine(self.first, time(), ZoneInfo(self.tz)).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        nxt = self.last + timedelta(days=1)
        return int(datetime.combine(nxt, time(), ZoneInfo(self.tz)).timestamp() * 1000)

    def holds(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms

    def week(self, at_ms: int) -> date:
        """The local Monday of the week holding ``at_ms``."""
        local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(self.tz)).date()
        return local - timedelta(days=local.weekday())


def reply_window(text: str) -> Window:
    m = _LABEL.search(text)
    if m is None:
        raise ReplyUnreadable("no date range in the reply")
    return Window(date.fromisoformat(m[1]), date.fromisoformat(m[2]), m[3])


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _live_messages(sim: Simulator, guild_id: int) -> list[MessageRecord]:
    return [m for m in sim.ledger.messages_in(guild_id, include_deleted=False) if not m.is_bot]


def _member_events(sim: Simulator, guild_id: int, event: str) -> list[MemberEventRecord]:
    return [
        e
        for e in sim.ledger.member_events
        if e.guild_id == guild_id and e.event == event and not e.is_bot
    ]


def _voice(sim: Simulator, guild_id: int, w: Window) -> tuple[float, int, int]:
    """Closed sessions overlapping the window: (seconds inside it, members, boundaries)."""
    seconds, users, boundaries = 0.0, set[int](), 0
    members = sim.world.guilds[guild_id].members
    bots = {uid for uid, m in members.items() if m.user.bot}
    for v in sim.ledger.voice_sessions:
        if v.guild_id != guild_id or v.leave_ms is None or v.user_id in bots:
            continue
        if v.join_ms < w.end_ms and v.leave_ms > w.start_ms:
            seconds += max(0, min(v.leave_ms, w.end_ms) - max(v.join_ms, w.start_ms)) / 1000
            users.add(v.user_id)
            boundaries += 2 + 2 * v.moves
    return seconds, len(users), boundaries


def overview_checks(
    sim: Simulator, guild_id: int, fields: dict[str, str], text: str
) -> list[Check]:
    w = reply_window(text)
    messages = [m for m in _live_messages(sim, guild_id) if w.holds(m.created_ms)]
    joins = sum(w.holds(e.at_ms) for e in _member_events(sim, guild_id, "join"))
    leaves = sum(w.holds(e.at_ms) for e in _member_events(sim, guild_id, "leave"))
    seconds, voice_members, boundaries = _voice(sim, guild_id, w)
    expected = {
        "Messages": len(messages),
        "Active members": len({m.author_id for m in messages}),
        "Voice members": voice_members,
        "Joins": joins,
        "Leaves": leaves,
        "Net growth": joins - leaves,
        "Reactions": sum(
            r.event == "add" and w.holds(r.at_ms)
            for r in sim.ledger.reactions
            if r.guild_id == guild_id
        ),
    }
    checks = [
        Check("commands", f"/overview {name.lower()}", n, _field(fields, name))
        for name, n in expected.items()
    ]
    # Shown in whole minutes: half a minute of rounding, plus the voice slack of the capture.
    slack_s = VOICE_BOUNDARY_S * boundaries + VOICE_SLACK_S
    checks.append(
        Check(
            "commands",
            "/overview voice time (minutes)",
            round(seconds / 60, 3),
            _minutes(fields.get("Voice time", "")),
            tolerance=round(0.5 + slack_s / 60, 3),
            note="shown rounded to minutes; bot stamps voice by receive time",
        )
    )
    return checks


def _field(fields: dict[str, str], name: str) -> float:
    value = fields.get(name)
    if value is None:
        return math.nan  # never equal: the check fails and names the field
    return float(_int(value.lstrip("+")))


def _minutes(value: str) -> float:
    m = _VOICE_TIME.match(value)
    if m is None:
        return math.nan
    return int(m[1] or 0) * 60 + int(m[2])


def heatmap_checks(sim: Simulator, guild_id: int, text: str) -> list[Check]:
    """The total, the busiest hour's and the busiest day's counts (by local weekday and hour)."""
    w = reply_window(text)
    zone = ZoneInfo(w.tz)
    cells: Counter[tuple[int, int]] = Counter()
    for msg in _live_messages(sim, guild_id):
        if w.holds(msg.created_ms):
            local = datetime.fromtimestamp(msg.created_ms / 1000, zone)
            cells[(local.weekday(), local.hour)] += 1
    days: Counter[int] = Counter()
    for (day, _), n in cells.items():
        days[day] += n
    shown = [math.nan] * 3
    if "No messages in this range" in text:
        shown = [0.0, 0.0, 0.0]
    elif (m := _HEATMAP.search(text)) is not None:
        shown = [_int(m[1]), _int(m[2]), _int(m[3])]
    return [
        Check("commands", "/heatmap total messages", cells.total(), shown[0]),
        Check(
            "commands", "/heatmap busiest hour's messages", max(cells.values(), default=0), shown[1]
        ),
        Check(
            "commands", "/heatmap busiest day's messages", max(days.values(), default=0), shown[2]
        ),
    ]


def expected_cohorts(
    sim: Simulator, guild_id: int, w: Window, weeks: int
) -> dict[date, tuple[int, tuple[int, ...]]]:
    """Local join week → (members who first joined then, members active in week 0..N), for
    the weeks N < ``weeks`` that have begun (a later week is shown blank, not 0)."""
    first_join: dict[int, int] = {}
    for e in _member_events(sim, guild_id, "join"):
        first_join[e.user_id] = min(e.at_ms, first_join.get(e.user_id, e.at_ms))
    cohort = {u: w.week(at) for u, at in first_join.items() if w.holds(at)}
    active: dict[int, set[date]] = {}
    for m in _live_messages(sim, guild_id):
        if m.author_id in cohort:
            active.setdefault(m.author_id, set()).add(w.week(m.created_ms))
    out: dict[date, tuple[int, list[int]]] = {}
    for user, week in cohort.items():
        joined, cells = out.setdefault(week, (0, [0] * weeks))
        out[week] = (joined + 1, cells)
        for seen in active.get(user, ()):
            n = (seen - week).days // 7
            if 0 <= n < weeks:
                cells[n] += 1
    today = datetime.now(ZoneInfo(w.tz)).date()
    return {
        week: (joined, tuple(c for n, c in enumerate(cells) if week + timedelta(weeks=n) <= today))
        for week, (joined, cells) in sorted(out.items())
    }


def retention_checks(sim: Simulator, guild_id: int, text: str, weeks: int) -> list[Check]:
    w = reply_window(text)
    expected = expected_cohorts(sim, guild_id, w, weeks)
    shown: dict[date, tuple[int, tuple[int, ...]]] = {}
    for m in _COHORT.finditer(text):
        values = [c.rsplit(": ", 1)[1] for c in m[3].split(", ")]
        # Weeks not begun are shown as a dash, after the ones that have begun.
        cells = tuple(int(v) for v in values if v.isdigit())
        if len(cells) + values.count(NOT_YET) != len(values):
            cells = ()  # neither a count nor a dash: unreadable, every cell check fails
        shown[date.fromisoformat(m[1])] = (int(m[2]), cells)
    checks = [Check("commands", "/retention cohorts", len(expected), len(shown))]
    for week in sorted(set(expected) | set(shown)):
        joined, cells = expected.get(week, (0, (0,) * weeks))
        got_joined, got_cells = shown.get(week, (0, (0,) * weeks))
        checks.append(Check("commands", f"/retention cohort {week} size", joined, got_joined))
        checks.append(
            Check("commands", f"/retention cohort {week} weeks begun", len(cells), len(got_cells))
        )
        shown_cells: tuple[float, ...] = got_cells
        if len(shown_cells) != len(cells):  # the reply followed another number of weeks
            shown_cells = (math.nan,) * len(cells)
        checks += [
            Check("commands", f"/retention cohort {week} active in week {n}", c, got)
            for n, (c, got) in enumerate(zip(cells, shown_cells, strict=True))
        ]
    return checks


def growth_checks(sim: Simulator, guild_id: int, text: str, counts: dict[date, int]) -> list[Check]:
    """``counts``: the member-count snapshots (UTC day → count) the guild has."""
    w = reply_window(text)
    joins = sum(w.holds(e.at_ms) for e in _member_events(sim, guild_id, "join"))
    leaves = sum(w.holds(e.at_ms) for e in _member_events(sim, guild_id, "leave"))
    m = _GROWTH.search(text)
    got = (math.nan, math.nan) if m is None else (_int(m[1]), _int(m[2]))
    # The reply names the first and the last day of the range with a snapshot, and their counts.
    days = sorted(d for d in counts if w.first <= d <= w.last)
    members = _MEMBERS.search(text)
    shown = [math.nan, math.nan]
    expected = [math.nan, math.nan]
    if days:
        expected = [counts[days[0]], counts[days[-1]]]
        if members is not None and (members[2], members[4]) == (str(days[0]), str(days[-1])):
            shown = [_int(members[1]), _int(members[3])]
    note = f"snapshots of {days[0]} and {days[-1]}" if days else "no snapshot in the range"
    return [
        Check("commands", "/growth joins", joins, got[0]),
        Check("commands", "/growth leaves", leaves, got[1]),
        Check("commands", "/growth member count (first)", expected[0], shown[0], note=note),
        Check("commands", "/growth member count (last)", expected[1], shown[1], note=note),
    ]


# -- presence ---------------------------------------------------------------------------------
#
# The bots record presence transitions only in the guilds whose tier grants presence, stamped
# by their receive time: the ledger knows each update's guild, member, status and activity
# types exactly, and its time to within the delivery delay.

PRESENCE = "presence"
# An update sent this close to an hour boundary may be received in the next hour.
_PRESENCE_EDGE_MS = 500
_ONLINE_PEAK = re.compile(r"^Peak: ([\d,]+) members at \w+ (\d{4}-\d{2}-\d{2} \d{2}):00\.", re.M)
_ONLINE_HOUR = re.compile(r"^`\w+ \d{2}-\d{2} (\d{2}):00` ([\d,]+)$", re.MULTILINE)


def presence_guilds(sim: Simulator, entitled: Mapping[int, str]) -> set[int]:
    """The guilds whose tier (their subscription's, else the default one) grants presence."""
    definition = platform.load()
    grants = {t.name: PRESENCE in t.features for t in definition.tiers}
    default = grants.get(definition.default_tier, False)
    return {g for g in sim.world.guilds if grants.get(entitled.get(g, ""), default)}


async def presence_checks(
    conn: asyncpg.Connection, sim: Simulator, entitled: Mapping[int, str]
) -> list[Check]:
    """Postgres's presence rows against the ledger: row by row in the granted guilds (guild,
    member, status, activity types), none elsewhere."""
    granted = presence_guilds(sim, entitled)
    expected = sim.ledger.presence_rows(granted)
    rows = await conn.fetch(
        "SELECT guild_id, user_id, status, activity_types, count(*) AS n"
        " FROM presence_events GROUP BY 1, 2, 3, 4"
    )
    actual: Counter[tuple[int, int, str, int]] = Counter(
        {(r["guild_id"], r["user_id"], r["status"], r["activity_types"]): r["n"] for r in rows}
    )
    sent = sum(1 for p in sim.ledger.presences if p.guild_id in granted)
    sent_elsewhere = len(sim.ledger.presences) - sent
    elsewhere = sum(n for key, n in actual.items() if key[0] not in granted)
    return [
        Check(
            "capture",
            "presence transitions (granted guilds)",
            expected.total(),
            actual.total() - elsewhere,
            note=f"of {sent:,} updates sent there; repeats are not transitions",
        ),
        Check(
            "capture",
            "presence rows equal to the ledger's",
            expected.total(),
            (expected & actual).total(),
            note="guild, member, status and activity types",
        ),
        Check(
            "capture",
            "presence rows of guilds without the feature",
            0,
            elsewhere,
            note=f"{sent_elsewhere:,} updates sent there",
        ),
    ]


def online_checks(sim: Simulator, guild_id: int, text: str) -> list[Check]:
    """/online's peak and each hour it lists, against the members the ledger has online."""
    w = reply_window(text)
    zone = ZoneInfo(w.tz)
    until = min(w.end_ms, int((datetime.now().timestamp() // 60 + 1) * 60_000))
    changes: dict[int, list[tuple[int, str]]] = {}
    for p in sim.ledger.presences:
        if p.guild_id == guild_id and p.transition and p.at_ms < until:
            changes.setdefault(p.user_id, []).append((p.at_ms, p.status))
    hours: dict[datetime, set[int]] = {}
    edge: set[int] = set()
    for user, seq in changes.items():
        for i, (at, status) in enumerate(seq):
            if at % 3_600_000 < _PRESENCE_EDGE_MS or -at % 3_600_000 < _PRESENCE_EDGE_MS:
                edge.add(user)
            if status == "offline":
                continue
            following = seq[i + 1][0] if i + 1 < len(seq) else None
            start = max(at, w.start_ms)
            end = until if following is None else min(following, until)
            if end <= start:
                # The next update in the same millisecond (the live phase sends a granted
                # guild several at once): the bot's receive times, in microseconds, still give
                # this one a moment online, which the reply counts in its hour. (Every ``at``
                # here is before ``until``.)
                if following != at or at < w.start_ms:
                    continue
                end = start + 1
            hour = datetime.fromtimestamp(start / 1000, zone).replace(minute=0, second=0)
            hour = hour.replace(microsecond=0)
            while hour.timestamp() * 1000 < end:
                hours.setdefault(hour, set()).add(user)
                hour = datetime.fromtimestamp(hour.timestamp() + 3600, zone)
    counts = {f"{h:%H}": len(u) for h, u in hours.items()}
    peak = _ONLINE_PEAK.search(text)
    shown = {m[1]: _int(m[2]) for m in _ONLINE_HOUR.finditer(text)}
    tolerance = len(edge)
    note = "bot stamps presence by receive time"
    checks = [
        Check(
            "commands",
            "/online peak members",
            max(counts.values(), default=0),
            math.nan if peak is None else _int(peak[1]),
            tolerance=tolerance,
            note=note,
        )
    ]
    checks += [
        Check(
            "commands",
            f"/online members in hour {h}:00",
            counts.get(h, 0),
            shown.get(h, 0),
            tolerance=tolerance,
            note=note,
        )
        for h in sorted(set(counts) | set(shown))
    ]
    return checks
