"""A shard's state in Postgres: taken when a runner opens the shard, advanced inside each
flush's transaction.

Shard state lives in Postgres and is written inside each flush's transaction, together with the
rows it describes (postgres migration 0009), so it never runs ahead of or lags behind them and
survives Redis being restarted or emptied:

- ``bot_gateway_marks`` — per shard: the last gateway session and sequence whose rows are
  committed, the resume URL, when the shard was last known alive, and ``epoch``, the shard's
  fence. A runner bumps the epoch when it loads the mark; a flush carrying an older epoch writes
  none of that shard's state and stages none of its receive-time-keyed rows (its new owner
  RESUMEs from the mark and so receives those events again). The next owner of a shard
  RESUMEs from the mark, so Discord replays exactly what was received but never committed:
  nothing is lost and nothing is stored twice.
- ``bot_voice_open`` — the open voice sessions; ``bot_member_counts`` — member count per guild
  (for shards that RESUME and so get no GUILD_CREATE, and for the daily snapshot).
- ``bot_backfill_pending`` — backfills not yet committed (:mod:`herwa.bot.backfill`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from herwa.bot import channel_types, metrics
from herwa.bot.backfill import BackfillOp
from herwa.bot.buffer import TABLES, Batch
from herwa.bot.directory import Directory
from herwa.bot.tombstones import Tombstones
from herwa.bot.voice import VoiceOp, VoiceTracker
from herwa.json_types import Json
from herwa.stores import rows_affected

log = logging.getLogger(__name__)
# Where each staging row holds its guild id: a fenced shard's rows are found by their guild.
_GUILD_COLUMN = {table: columns.index("guild_id") for table, columns in TABLES.items()}
_MEMBER_EVENT = TABLES["member_events"].index("event")
_GUILD_EVENT = TABLES["guild_events"].index("event")
# The rows whose key holds the bot's receive time (Discord sends no time for a leave, a voice
# change or a reaction): a replayed event gets another key, so only one pod may stage them.
_RECEIVE_TIME_KEYED: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "voice_sessions": lambda row: True,
    "member_events": lambda row: row[_MEMBER_EVENT] == "leave",
    "guild_events": lambda row: row[_GUILD_EVENT] == "leave",
    "message_reactions": lambda row: True,
    "presence_events": lambda row: True,
}
for _table in _RECEIVE_TIME_KEYED:
    metrics.ROWS_FENCED.labels(_table)


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord routes a guild to."""
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True)
class MemberCountOp:
    shard_id: int
    guild_id: int
    count: int


@dataclass(frozen=True)
class Mark:
    """Everything this shard received up to ``seq`` is in (or before) the batch carrying it.
    ``epoch`` is the shard's Postgres fence taken when this runner loaded its state."""

    epoch: int
    session_id: str
    seq: int
    resume_url: str


@dataclass(frozen=True)
class Stored:
    """What a runner takes over with its shard: the fence, the guilds a RESUME will not
    announce, and the committed gateway session to RESUME (None: IDENTIFY)."""

    epoch: int
    guilds: set[int]
    resume: Json | None


class ShardState:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        shard_count: int,
        directory: Directory,
        voice: VoiceTracker,
        tombstones: Tombstones,
        epoch_of: Callable[[int], int | None],
    ) -> None:
        self.pool = pool
        self.shard_count = shard_count
        self.directory = directory
        self.voice = voice
        self.tombstones = tombstones
        # The epoch of the runner this pod has for a shard (None: no runner), for a flush that
        # carries a shard's voice or backfill ops but no mark of it.
        self._epoch_of = epoch_of

    async def load(self, shard_id: int) -> Stored:
        """Take the shard's Postgres fence and load its voice sessions, member counts,
        channels and the committed gateway session (if any) to RESUME."""
        sid = shard_id
        shard_guilds = "(guild_id >> 22) % $1 = $2"
        async with self.pool.acquire() as conn, conn.transaction():
            # A shard taken over honours a deletion its previous owner answered just now.
            await self.tombstones.load(conn)
            gw = await conn.fetchrow(
                "INSERT INTO bot_gateway_marks (shard_count, shard_id) VALUES ($1, $2) "
                "ON CONFLICT (shard_count, shard_id) DO UPDATE "
                "SET epoch = bot_gateway_marks.epoch + 1, updated_at = now() "
                "RETURNING epoch, session_id, seq, resume_url, alive_at",
                self.shard_count,
                sid,
            )
            if gw is None:  # an upsert's RETURNING always yields its row
                raise RuntimeError(f"shard {sid}: no gateway mark row after the upsert")
            epoch = int(gw["epoch"])
            sessions: dict[int, dict[bytes, bytes]] = defaultdict(dict)
            for row in await conn.fetch(
                f"SELECT guild_id, user_id, state::text AS state FROM bot_voice_open "  # noqa: S608
                f"WHERE {shard_guilds}",
                self.shard_count,
                sid,
            ):
                sessions[row["guild_id"]][str(row["user_id"]).encode()] = row["state"].encode()
            for gid, raw in sessions.items():
                # A deleted server's open sessions stay behind: closing them would record them.
                if gid not in self.tombstones:
                    self.voice.load(gid, raw)
            for row in await conn.fetch(
                f"SELECT guild_id, member_count FROM bot_member_counts WHERE {shard_guilds}",  # noqa: S608
                self.shard_count,
                sid,
            ):
                self.directory.member_counts[row["guild_id"]] = row["member_count"]
            # A shard that RESUMEs gets no GUILD_CREATE: its guilds come from Postgres. The
            # guilds rows are written apart from the mark (the metadata queue), so a GUILD_CREATE
            # the mark covers may have no row yet; its member count commits with the mark.
            known = await conn.fetch(
                "SELECT guild_id FROM guilds WHERE left_at IS NULL AND (guild_id >> 22) % $1 = $2 "
                "UNION SELECT m.guild_id FROM bot_member_counts m "
                "WHERE (m.guild_id >> 22) % $1 = $2 "
                "AND NOT EXISTS (SELECT 1 FROM guilds g WHERE g.guild_id = m.guild_id)",
                self.shard_count,
                sid,
            )
            guilds = {int(r["guild_id"]) for r in known}
            rows = await conn.fetch(
                "SELECT c.channel_id, c.guild_id, c.parent_id, c.name, c.kind FROM channels c "
                "JOIN guilds g USING (guild_id) WHERE g.left_at IS NULL "
                "AND (c.guild_id >> 22) % $1 = $2",
                self.shard_count,
                sid,
            )
        for row in rows:
            self.directory.add_channel(
                row["guild_id"],
                {
                    "id": row["channel_id"],
                    "type": channel_types.type_of(row["kind"]),
                    "parent_id": row["parent_id"],
                    "name": row["name"],
                },
            )
        if gw["session_id"] is None:
            return Stored(epoch, guilds, None)
        alive = gw["alive_at"]
        return Stored(
            epoch,
            guilds,
            {
                "session_id": gw["session_id"],
                "seq": int(gw["seq"]),
                "resume_url": _url(gw["resume_url"]),
                "alive": alive.timestamp() if alive is not None else time.time(),
            },
        )

    async def in_commit(self, conn: Any, batch: Batch) -> None:
        """Inside the batch's transaction: advance each shard's gateway mark and apply its
        open voice sessions, member counts and pending backfills, fenced by the shard's epoch.
        A shard whose epoch has moved on (a newer owner loaded its mark) writes no state and
        leaves its receive-time-keyed rows to that owner."""
        voice: dict[int, dict[tuple[int, int], bytes | None]] = defaultdict(dict)
        counts: dict[int, dict[int, int]] = defaultdict(dict)
        backfills: dict[int, list[BackfillOp]] = defaultdict(list)
        for extra in batch.extras:
            if isinstance(extra, VoiceOp):
                voice[extra.shard_id][(extra.guild_id, extra.user_id)] = extra.session
            elif isinstance(extra, MemberCountOp):
                counts[extra.shard_id][extra.guild_id] = extra.count
            elif isinstance(extra, BackfillOp):
                backfills[extra.shard_id].append(extra)
        marks: dict[int, Mark] = batch.marks or {}
        fenced: set[int] = set()  # a newer owner took over: neither state nor rows
        skipped: set[int] = set()  # no runner any more: its state is not this pod's to write
        # Sorted: every pod locks mark rows in one order, so two flushes cannot deadlock.
        for sid in sorted(set(voice) | set(counts) | set(backfills) | set(marks)):
            mark = marks.get(sid)
            epoch = mark.epoch if mark else self._epoch_of(sid)
            if epoch is None:
                skipped.add(sid)
                continue
            status = await conn.execute(
                "UPDATE bot_gateway_marks SET session_id = coalesce($4, session_id), "
                "seq = coalesce($5, seq), resume_url = coalesce($6, resume_url), "
                "alive_at = CASE WHEN $4::text IS NULL THEN alive_at ELSE now() END, "
                "updated_at = now() "
                "WHERE shard_count = $1 AND shard_id = $2 AND epoch = $3",
                self.shard_count,
                sid,
                epoch,
                mark.session_id if mark else None,
                mark.seq if mark else None,
                mark.resume_url if mark else None,
            )
            if rows_affected(status) == 0:
                fenced.add(sid)
        if fenced:
            self._drop_fenced(batch, fenced)
        stateless = fenced | skipped
        closed = sorted(
            (gid, uid)
            for sid, ops in voice.items()
            if sid not in stateless
            for (gid, uid), session in ops.items()
            if session is None
        )
        opened = sorted(
            (gid, uid, session.decode())
            for sid, ops in voice.items()
            if sid not in stateless
            for (gid, uid), session in ops.items()
            if session is not None
        )
        if closed:
            await conn.executemany(
                "DELETE FROM bot_voice_open WHERE guild_id = $1 AND user_id = $2", closed
            )
        if opened:
            await conn.executemany(
                "INSERT INTO bot_voice_open (guild_id, user_id, state) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (guild_id, user_id) DO UPDATE SET state = EXCLUDED.state",
                opened,
            )
        member_counts = sorted(
            (gid, count)
            for sid, by_guild in counts.items()
            if sid not in stateless
            for gid, count in by_guild.items()
        )
        if member_counts:
            await conn.executemany(
                "INSERT INTO bot_member_counts (guild_id, member_count) VALUES ($1, $2) "
                "ON CONFLICT (guild_id) DO UPDATE SET member_count = EXCLUDED.member_count, "
                "updated_at = now()",
                member_counts,
            )
        pending = [op for sid, ops in backfills.items() if sid not in stateless for op in ops]
        started = sorted((op.guild_id, op.until) for op in pending if not op.done)
        finished = sorted((op.guild_id, op.until) for op in pending if op.done)
        if started:
            await conn.executemany(
                "INSERT INTO bot_backfill_pending (guild_id, until_id) VALUES ($1, $2) "
                "ON CONFLICT (guild_id) DO UPDATE SET "
                "until_id = greatest(bot_backfill_pending.until_id, EXCLUDED.until_id), "
                "updated_at = now()",
                started,
            )
        if finished:
            # A later backfill of the same guild (a newer GUILD_CREATE) stays pending.
            await conn.executemany(
                "DELETE FROM bot_backfill_pending WHERE guild_id = $1 AND until_id <= $2",
                finished,
            )

    def _drop_fenced(self, batch: Batch, fenced: set[int]) -> None:
        """Leave out the receive-time-keyed rows of shards this pod no longer owns: their
        new owner RESUMEs from the committed mark, receives these events again and stages
        them under keys of its own. Rows keyed by Discord's ids and times are kept: the
        replay merges with them, and keeping them loses nothing if the session cannot be
        resumed."""
        log.warning("shards %s moved to a newer owner; leaving their rows to it", sorted(fenced))
        for table, rows in list(batch.rows.items()):
            keyed_by_receipt = _RECEIVE_TIME_KEYED.get(table)
            if keyed_by_receipt is None:
                continue
            col = _GUILD_COLUMN[table]
            kept = [
                r
                for r in rows
                if shard_of(r[col], self.shard_count) not in fenced or not keyed_by_receipt(r)
            ]
            metrics.ROWS_FENCED.labels(table).inc(len(rows) - len(kept))
            if kept:
                batch.rows[table] = kept
            else:
                del batch.rows[table]


def _url(raw: str) -> Any:
    import yarl

    return yarl.URL(raw)
