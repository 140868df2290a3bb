"""Discord's channel types as the bot reads them, and the kinds the ``channels`` table stores.

One table: the kind written for a type and the type read back for a kind (a shard that RESUMEs
gets no GUILD_CREATE and rebuilds its directory from ``channels``) cannot drift apart.
"""

from __future__ import annotations

TEXT = 0
VOICE = 2
CATEGORY = 4
NEWS = 5  # announcement channel
NEWS_THREAD = 10
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
STAGE = 13
FORUM = 15

THREADS = frozenset((NEWS_THREAD, PUBLIC_THREAD, PRIVATE_THREAD))
# Channels whose history backfill reads (besides the threads the bot knows of).
MESSAGE_CHANNELS = frozenset((TEXT, NEWS))
# Every type a channel can have, for "does the bot know any channel of this guild?".
ANY = frozenset(range(32))

# The stored kind of each type. The thread types share one kind: read back, a kind is the
# first type listed for it, and an unlisted kind ("other") reads back as a text channel.
_KINDS = {
    TEXT: "text",
    VOICE: "voice",
    CATEGORY: "category",
    NEWS: "news",
    STAGE: "stage",
    FORUM: "forum",
    PUBLIC_THREAD: "thread",
    NEWS_THREAD: "thread",
    PRIVATE_THREAD: "thread",
}
OTHER = "other"
_TYPES: dict[str, int] = {}
for _type, _kind in _KINDS.items():
    _TYPES.setdefault(_kind, _type)


def kind_of(channel_type: int) -> str:
    """The ``channels.kind`` stored for a channel of this type."""
    return _KINDS.get(channel_type, OTHER)


def type_of(kind: str) -> int:
    """The channel type a stored ``channels.kind`` stands for."""
    return _TYPES.get(kind, TEXT)
