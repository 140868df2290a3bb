"""The run lock: one ETL run at a time, across pods, through a Postgres advisory lock."""

from __future__ import annotations

import asyncpg

# Fixed and distinct from the migrator's key ("herwa" + 1): "herwa" + 5, the ETL issue.
RUN_LOCK_KEY = 0x6865727761_05


class LockHeld(RuntimeError):
    """Another ETL run holds the lock."""


async def acquire(pg: asyncpg.Connection) -> None:
    """Take the session-level lock on this connection, or raise :class:`LockHeld` at once.

    Session-level on purpose: it survives the per-batch transactions and is released by the
    server the moment the connection drops, so a crashed run never blocks the next one.
    """
    if not await pg.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK_KEY):
        holder = await pg.fetchval(
            """
            SELECT pid FROM pg_locks
            WHERE locktype = 'advisory' AND granted
              AND ((classid::bigint << 32) | objid::bigint) = $1
            """,
            RUN_LOCK_KEY,
        )
        raise LockHeld(f"another ETL run holds the run lock (backend pid {holder})")


async def release(pg: asyncpg.Connection) -> None:
    await pg.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK_KEY)
