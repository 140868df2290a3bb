"""Where discord.py sends its REST calls and opens its gateway.

discord.py has no public base-URL option; these two class attributes are the whole redirect:
REST (including interaction callbacks and webhook follow-ups, which use the same ``Route``)
and the default gateway, which a ``Client`` with a fixed shard connects to without asking
``/gateway/bot``. The bot uses this when ``HERWA_DISCORD_API_BASE`` is set (the simulator, a
proxy); the simulator's tests use it for bare clients.
"""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"


def point_discord_at(api_base: str | None, gateway_url: str | None = None) -> None:
    """``api_base`` like ``http://127.0.0.1:PORT/api/v10``; ``gateway_url`` like
    ``ws://127.0.0.1:PORT/gateway``, by default derived from ``api_base``. ``None`` for both
    leaves discord.py pointed at Discord."""
    if api_base is not None:
        api_base = api_base.rstrip("/")
        if gateway_url is None:
            root = yarl.URL(api_base).origin()
            scheme = "wss" if root.scheme == "https" else "ws"
            gateway_url = str(root.with_scheme(scheme).with_path("/gateway"))
        # Must run after ``import discord``: discord.http resets BASE when its API version is set.
        discord.http.Route.BASE = api_base
    if gateway_url is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def restore_discord_defaults() -> None:
    discord.http.Route.BASE = DISCORD_API_BASE
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(DISCORD_GATEWAY)
