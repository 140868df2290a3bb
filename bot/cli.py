"""``herwa bot``: run one bot pod until SIGTERM.

The pod's identity is HERWA_BOT_POD_NAME, else the host name (a StatefulSet pod's name is its
host name, so the identity is stable across restarts). Exit codes: 0 clean shutdown with
everything flushed, 1 rows left unflushed at the end of the grace period, 2 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

import discord.http

from herwa import config
from herwa.bot.app import BotApp, install_signal_handlers
from herwa.bot.commands import CommandDeps
from herwa.discord_api import point_discord_at
from herwa.logs import register_secret
from herwa.stores import clickhouse_client, postgres_pool, redis_client
from herwa.telemetry import TelemetryServer, setup_tracing

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pod-name", help="override HERWA_BOT_POD_NAME")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(main(getattr(args, "pod_name", None)))


def pod_identity(configured: str | None) -> str:
    return configured or socket.gethostname().lower()


async def gateway_info(token: str) -> tuple[int, int]:
    """(recommended shards, max_concurrency) from ``GET /gateway/bot``."""
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(token)
        shards, _url, limit = await http.get_bot_gateway()
        return int(shards), int(limit.get("max_concurrency", 1))
    finally:
        await http.close()


async def main(pod_override: str | None = None) -> int:
    bot = config.bot()
    disc = config.discord()
    token = disc.require_token().get_secret_value()
    register_secret(token)
    pg = config.postgres()
    rd = config.redis()
    ch = config.clickhouse()
    commands = config.commands()
    tel = config.telemetry()
    register_secret(pg.dsn.get_secret_value())
    register_secret(rd.url.get_secret_value())
    register_secret(ch.query_url().get_secret_value())
    point_discord_at(disc.api_base, disc.gateway_url)
    setup_tracing("herwa-bot")
    pod = pod_identity(pod_override or bot.pod_name)

    shard_count = disc.shard_count
    max_concurrency = bot.max_concurrency
    if shard_count is None or max_concurrency is None:
        recommended, concurrency = await gateway_info(token)
        shard_count = shard_count or recommended
        max_concurrency = max_concurrency or concurrency

    # One connection more than configured: the guild-settings listener holds one for good.
    pool = await postgres_pool(pg.model_copy(update={"pool_max_size": pg.pool_max_size + 1}))
    redis = redis_client(rd)
    # Slash commands read ClickHouse as the read-only user only.
    analytics = await clickhouse_client(ch, readonly=True)
    app = BotApp(
        settings=bot,
        discord_settings=disc,
        pool=pool,
        redis=redis,
        prefix=rd.key_prefix,
        pod=pod,
        token=token,
        shard_count=shard_count,
        max_concurrency=max_concurrency,
        commands=CommandDeps(
            pool=pool,
            redis=redis,
            clickhouse=analytics,
            settings=commands,
            redis_prefix=rd.key_prefix,
            default_timezone=config.guild_defaults().timezone,
        ),
    )
    server = TelemetryServer(tel.host, tel.port, readiness=app.readiness)
    install_signal_handlers(app)
    ok = False
    try:
        await server.start()
        log.info(
            "bot pod starting",
            extra={"pod": pod, "shard_count": shard_count, "telemetry_port": server.port},
        )
        # Tests and supervisors read this line to find the port when 0 was asked for.
        print(f"HERWA_BOT_TELEMETRY_PORT={server.port}", flush=True)
        await app.start()
        await app.wait_stopped()
        log.info("shutting down: closing shards and flushing")
        ok = await app.shutdown()
    finally:
        await server.stop()
        await analytics.close()
        await redis.aclose()
        await pool.close()
    log.info("bot pod stopped", extra={"flushed_everything": ok})
    return 0 if ok else 1
