"""Where discord.py sends its REST calls and opens its gateway.

discord.py has no public base-URL option; these two class attributes are the whole redirect:
REST (including interaction callbacks and webhook follow-ups, which use the same ``Route``)
and the default gateway, which a ``Client`` with a fixed shard connects to without asking
``/gateway/bot``. The bot points REST at ``HERWA_DISCORD_API_BASE`` when set, and the gateway
at ``HERWA_DISCORD_GATEWAY_URL`` or else at the URL ``GET /gateway/bot`` announces (Discord's
gateway host is not its REST host, so no path can be derived from the REST base).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import discord.gateway
import discord.http
import yarl

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"


@dataclass(frozen=True)
class BotGateway:
    """``GET /gateway/bot``: where to connect, how many shards, how many IDENTIFYs at once."""

    url: str
    shards: int
    max_concurrency: int
    # The daily session-start budget: IDENTIFYs left, and when the budget is refilled.
    session_starts_remaining: int | None = None
    session_starts_reset_after_s: float | None = None


def point_discord_at(api_base: str | None, gateway_url: str | None = None) -> None:
    """``api_base`` like ``http://127.0.0.1:PORT/api/v10``; ``gateway_url`` like
    ``ws://127.0.0.1:PORT/gateway``. ``None`` leaves that one as it is."""
    if api_base is not None:
        # Must run after ``import discord``: discord.http resets BASE when its API version is set.
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


async def bot_gateway(token: str) -> BotGateway:
    """Ask ``GET /gateway/bot`` (at the REST base in effect) and check its answer."""
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(token)
        shards, url, limit = await http.get_bot_gateway()
    finally:
        await http.close()
    if not (isinstance(url, str) and url.startswith(("ws://", "wss://"))):
        raise ValueError(f"GET /gateway/bot gave no websocket URL: {url!r}")
    remaining = limit.get("remaining")
    reset_after = limit.get("reset_after")
    return BotGateway(
        url,
        int(shards),
        int(limit.get("max_concurrency", 1)),
        int(remaining) if remaining is not None else None,
        int(reset_after) / 1000 if reset_after is not None else None,
    )


def restore_discord_defaults() -> None:
    discord.http.Route.BASE = DISCORD_API_BASE
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(DISCORD_GATEWAY)
