"""Presence capture: which servers may be recorded, and each member's last known presence.

Presence is opt-in twice: the pod must be started with ``HERWA_BOT_PRESENCE_CAPTURE`` (the
privileged GUILD_PRESENCES intent; without it Discord sends no PRESENCE_UPDATE at all), and a
server's tier must grant the ``presence`` feature (its GuildSubscription's features, else the
default tier's). The grants are read from Postgres with the guild settings (at start, on every
``/config`` notification and every 30 s), so a new subscription takes effect within that time.

Discord sends a PRESENCE_UPDATE for every change of a member's activities, including a new song
or game detail, most of which change nothing Herwa counts. Only transitions are recorded: the
status or the set of activity types differs from the member's last known one. A shard keeps
that last state per server for at most ``presence_members_per_guild`` members (the most
recently changed; offline members are not kept, as offline is what an unknown member is
assumed to be), one small int each. What it forgets costs at most one repeated row, never a
lost transition. The state is the shard's gateway session's: a new session (READY) or a new
owner starts empty, since the events in between may be lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from herwa.bot.capture import PRESENCE_STATUSES, Row
from herwa.entitlements import FeatureHolders, Queryable, feature_holders

FEATURE = "presence"
_OFFLINE = PRESENCE_STATUSES.index("offline")


@dataclass
class PresenceGrants:
    """Which servers' presence the pod records; shared by its shards, replaced on reload."""

    enabled: bool  # the pod requested the intent
    members_per_guild: int
    holders: FeatureHolders = field(default_factory=FeatureHolders)

    def allows(self, guild_id: int) -> bool:
        return self.enabled and self.holders.holds(guild_id)

    async def load(self, conn: Queryable) -> None:
        if self.enabled:
            self.holders = await feature_holders(conn, FEATURE)


@dataclass
class PresenceTransitions:
    """One shard's last known presence per server and member, bounded per server."""

    grants: PresenceGrants
    _last: dict[int, dict[int, int]] = field(default_factory=dict)

    def changed(self, row: Row) -> bool:
        """Whether ``row`` (from :func:`herwa.bot.capture.presence_row`) is a transition of a
        server whose presence is recorded; remembers it."""
        guild_id: int = row[0]
        user_id: int = row[1]
        status: str = row[3]
        types: int = row[4]
        if not self.grants.allows(guild_id):
            return False
        members = self._last.setdefault(guild_id, {})
        code = PRESENCE_STATUSES.index(status) << 6 | types
        # Re-inserted last: the dict's order is recency, the first entry the one to forget.
        last: int | None = members.pop(user_id, None)
        if code >> 6 != _OFFLINE:
            members[user_id] = code
            if len(members) > self.grants.members_per_guild:
                del members[next(iter(members))]
        return last != code

    def forget(self, guild_ids: Iterable[int] | None = None) -> None:
        """Drop what is known of these servers (all when None)."""
        if guild_ids is None:
            self._last.clear()
            return
        for gid in guild_ids:
            self._last.pop(gid, None)

    @property
    def held(self) -> int:
        """Members whose presence is remembered, over every server."""
        return sum(map(len, self._last.values()))
