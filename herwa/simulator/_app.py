"""The bot application as Discord knows it: token, id, enabled privileged intents, commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from herwa.json_types import Json
from herwa.simulator._world import User


@dataclass
class AppState:
    token: str
    application_id: int
    bot_user: User
    # Privileged intents switched on "in the developer portal"; others are refused with 4014.
    privileged_intents: int
    revoked: set[str] = field(default_factory=set)
    global_commands: list[Json] = field(default_factory=list)
    guild_commands: dict[int, list[Json]] = field(default_factory=dict)
    command_version: int = 0
    # How long /users/@me (the login of every shard a bot starts) takes to answer: a slow
    # Discord, or a loaded machine, for tests of what a bot does while its starts are slow.
    login_delay_s: float = 0.0

    def token_valid(self, token: str) -> bool:
        if token.startswith("Bot "):
            token = token[4:]
        return token == self.token and token not in self.revoked

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def application_payload(self) -> Json:
        owner = {
            "id": "1",
            "username": "owner",
            "discriminator": "0",
            "global_name": "Owner",
            "avatar": None,
        }
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "description": "Herwa (simulated)",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": owner,
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
            "summary": "",
            "rpc_origins": [],
            "bot": self.bot_user.payload(),
        }

    def find_command(self, name: str, guild_id: int | None) -> Json | None:
        pools = [self.guild_commands.get(guild_id, [])] if guild_id else []
        pools.append(self.global_commands)
        for pool in pools:
            for cmd in pool:
                if cmd.get("name") == name:
                    return cmd
        return None

    def command_names(self, guild_id: int) -> list[str]:
        names = {str(c["name"]) for c in self.global_commands if c.get("type", 1) == 1}
        names.update(
            str(c["name"]) for c in self.guild_commands.get(guild_id, []) if c.get("type", 1) == 1
        )
        return sorted(names)
