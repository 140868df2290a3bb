"""Point the real discord.py client at a simulator (or any Discord-compatible server).

discord.py has no public base-URL option. These two class attributes are the whole redirect:
REST (including interaction callbacks and webhook follow-ups, which use the same ``Route``)
and the default gateway, which a plain ``Client`` and an ``AutoShardedClient`` given a
``shard_count`` connect to without asking ``/gateway/bot``.
"""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl


def point_discord_at(api_base: str, gateway_url: str | None = None) -> None:
    """``api_base`` like ``http://127.0.0.1:PORT/api/v10``; ``gateway_url`` like
    ``ws://127.0.0.1:PORT/gateway`` (default: derived from ``api_base``)."""
    api = api_base.rstrip("/")
    if gateway_url is None:
        root = yarl.URL(api).origin()
        scheme = "wss" if root.scheme == "https" else "ws"
        gateway_url = str(root.with_scheme(scheme).with_path("/gateway"))
    # Must run after ``import discord``: discord.http resets BASE when its API version is set.
    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def restore_discord_defaults() -> None:
    discord.http.Route.BASE = "https://discord.com/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("wss://gateway.discord.gg/")
