"""What a command answers, independent of how (send, edit after defer) and cacheable."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import discord


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    description: str = ""  # alt text for screen readers

    def file(self) -> discord.File:
        return discord.File(
            io.BytesIO(self.data), filename=self.filename, description=self.description or None
        )


@dataclass(frozen=True)
class Reply:
    content: str = ""
    embeds: tuple[discord.Embed, ...] = ()
    files: tuple[Attachment, ...] = field(default=())
    ephemeral: bool = False

    def encode(self) -> bytes:
        return json.dumps(
            {
                "content": self.content,
                "embeds": [e.to_dict() for e in self.embeds],
                "files": [
                    {
                        "name": f.filename,
                        "alt": f.description,
                        "data": base64.b64encode(f.data).decode(),
                    }
                    for f in self.files
                ],
                "ephemeral": self.ephemeral,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Reply:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            content=data["content"],
            embeds=tuple(discord.Embed.from_dict(e) for e in data["embeds"]),
            files=tuple(
                Attachment(f["name"], base64.b64decode(f["data"]), f["alt"]) for f in data["files"]
            ),
            ephemeral=bool(data["ephemeral"]),
        )
