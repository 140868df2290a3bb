"""Slash-command interactions: what the simulator sends and what the bot answers.

The bot's answer arrives over REST (callback, then possibly an edit of ``@original`` and
follow-ups) and may carry files; every file is kept so a test can read the chart bytes.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field

from herwa.json_types import Json

# Interaction types.
APPLICATION_COMMAND = 2
APPLICATION_COMMAND_AUTOCOMPLETE = 4

# Interaction callback types.
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8


@dataclass
class StoredFile:
    id: int
    filename: str
    content_type: str
    data: bytes


@dataclass
class InteractionRecord:
    id: int
    token: str
    guild_id: int | None
    channel_id: int
    user_id: int
    name: str
    options: list[Json]
    # The invoker as Discord shows them in the reply's interaction_metadata, even once they
    # have left the server.
    user: Json | None = None
    response_type: int | None = None
    original: Json | None = None
    followups: list[Json] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    responded: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when an answer was refused by an injected reply fault (see fail_next_replies).
    refused: asyncio.Event = field(default_factory=asyncio.Event)
    type: int = APPLICATION_COMMAND
    # An autocomplete interaction's focused option as registered, and the bot's answer.
    focused: Json | None = None
    choices: list[Json] | None = None
    # Why the simulator refused the bot's answer (400 Invalid Form Body), as Discord would.
    invalid: str | None = None

    def result(self, files: dict[int, StoredFile], *, include_bytes: bool = False) -> Json:
        def msg(m: Json | None) -> Json | None:
            if m is None:
                return None
            out = {
                "id": m["id"],
                "content": m.get("content", ""),
                "embeds": m.get("embeds", []),
                "flags": m.get("flags", 0),
                "attachments": m.get("attachments", []),
            }
            if include_bytes:
                for a in out["attachments"]:
                    f = files.get(int(a["id"]))
                    if f is not None:
                        a["data_base64"] = base64.b64encode(f.data).decode()
            return out

        return {
            "interaction_id": str(self.id),
            "name": self.name,
            "guild_id": str(self.guild_id) if self.guild_id else None,
            "response_type": self.response_type,
            "deferred": self.response_type == DEFERRED_CHANNEL_MESSAGE,
            "complete": self.done.is_set(),
            "original": msg(self.original),
            "followups": [msg(f) for f in self.followups],
        }

    def autocomplete_result(self) -> Json:
        return {
            "interaction_id": str(self.id),
            "name": self.name,
            "response_type": self.response_type,
            "choices": self.choices,
            "invalid": self.invalid,
        }


class InteractionStore:
    def __init__(self) -> None:
        self.by_id: dict[int, InteractionRecord] = {}
        self.by_token: dict[str, InteractionRecord] = {}
        self.files: dict[int, StoredFile] = {}
        self._reply_faults: list[int | None] = []  # None: let that answer through

    def fail_next_replies(self, status: int, count: int = 1, *, after: int = 0) -> None:
        """Let ``after`` answers through, then refuse ``count`` (callbacks and edits of a
        deferred reply): 404 as Discord answers for an expired interaction, or a 5xx as during
        an outage."""
        if status != 404 and not 500 <= status <= 599:
            raise ValueError(f"a reply fault is 404 or a 5xx, not {status}")
        self._reply_faults.extend([None] * after + [status] * count)

    def take_reply_fault(self, rec: InteractionRecord) -> int | None:
        if not self._reply_faults:
            return None
        status = self._reply_faults.pop(0)
        if status is not None:
            rec.refused.set()
        return status

    def new_token(self) -> str:
        return "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)

    def add(self, rec: InteractionRecord) -> None:
        self.by_id[rec.id] = rec
        self.by_token[rec.token] = rec

    async def wait(self, interaction_id: int, timeout: float) -> InteractionRecord:
        rec = self.by_id[interaction_id]
        await asyncio.wait_for(rec.done.wait(), timeout)
        return rec
