"""Per-channel message history, as ``GET /channels/{id}/messages`` serves it (backfill)."""

from __future__ import annotations

import bisect

from herwa.json_types import Json


class History:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._ids: dict[int, list[int]] = {}
        self._msgs: dict[int, Json] = {}

    def add(self, channel_id: int, message: Json) -> None:
        if not self.enabled:
            return
        mid = int(message["id"])
        ids = self._ids.setdefault(channel_id, [])
        if not ids or mid > ids[-1]:
            ids.append(mid)
        else:
            bisect.insort(ids, mid)  # historical backlog lands before live messages
        self._msgs[mid] = message

    def get(self, message_id: int) -> Json | None:
        return self._msgs.get(message_id)

    def remove(self, channel_id: int, message_id: int) -> None:
        if self._msgs.pop(message_id, None) is None:
            return
        ids = self._ids.get(channel_id, [])
        i = bisect.bisect_left(ids, message_id)
        if i < len(ids) and ids[i] == message_id:
            del ids[i]

    def count(self, channel_id: int) -> int:
        return len(self._ids.get(channel_id, []))

    def query(
        self,
        channel_id: int,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
    ) -> list[Json]:
        """Discord's semantics: newest first for before/none/around; for ``after``, the
        ``limit`` messages immediately after the id (the oldest ones), still newest first."""
        ids = self._ids.get(channel_id, [])
        if around is not None:
            i = bisect.bisect_left(ids, around)
            half = limit // 2
            lo = max(0, i - half)
            sel = ids[lo : lo + limit]
        elif after is not None:
            i = bisect.bisect_right(ids, after)
            sel = ids[i : i + limit]
        else:
            hi = bisect.bisect_left(ids, before) if before is not None else len(ids)
            sel = ids[max(0, hi - limit) : hi]
        return [self._msgs[m] for m in reversed(sel)]
