"""Fault injection: the ways Discord disturbs a healthy shard."""

from __future__ import annotations

import time

from herwa.simulator._gateway import (
    CLOSE_SESSION_TIMED_OUT,
    CLOSE_UNKNOWN_ERROR,
    Gateway,
    Session,
)

FAULTS = ("drop", "close", "reconnect", "invalidate", "timeout", "stall")


class FaultError(LookupError):
    pass


def _live(gateway: Gateway, shard_id: int) -> list[Session]:
    found = [s for s in gateway.sessions_for_shard(shard_id) if s.connected]
    if not found:
        raise FaultError(f"no connected session for shard {shard_id}")
    return found


async def inject(gateway: Gateway, fault: str, shard_id: int, *, seconds: float = 5.0) -> int:
    """Apply ``fault`` to every connected session of ``shard_id``; returns how many.

    drop:       the TCP connection dies without a close frame (network failure); resumable.
    close:      Discord closes with 4000 (unknown error); resumable.
    reconnect:  op 7 RECONNECT; the client closes and resumes.
    invalidate: op 9 INVALID_SESSION (d=false); the session is gone, the client identifies.
    timeout:    close 4009 session timed out; the session is gone.
    stall:      nothing is sent (not even heartbeat ACKs) for ``seconds``; events queue up
                and are flushed afterwards.
    """
    sessions = _live(gateway, shard_id)
    for s in sessions:
        conn = s.conn
        if conn is None:
            continue
        if fault == "drop":
            conn.abort()
            s.conn = None
            s.disconnected_at = time.monotonic()
        elif fault == "close":
            await conn.close(CLOSE_UNKNOWN_ERROR, "Unknown error")
        elif fault == "reconnect":
            conn.send_op(7, None)
        elif fault == "invalidate":
            gateway.sessions.pop(s.id, None)
            conn.send_op(9, False)
        elif fault == "timeout":
            gateway.sessions.pop(s.id, None)
            await conn.close(CLOSE_SESSION_TIMED_OUT, "Session timed out")
        elif fault == "stall":
            s.stalled_until = time.monotonic() + seconds
        else:
            raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return len(sessions)
