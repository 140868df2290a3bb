"""``herwa bot``: run one bot pod until SIGTERM.

The pod's identity is HERWA_BOT_POD_NAME, else the host name (a StatefulSet pod's name is its
host name, so the identity is stable across restarts). Exit codes: 0 clean shutdown with
everything flushed, 1 rows left unflushed at the end of the grace period, 2 configuration error.
"""

from __future__ import annotations

import argparse
import logging
import socket

import uvloop

from herwa import config
from herwa.bot.app import BotApp, install_signal_handlers
from herwa.bot.commands import CommandDeps
from herwa.discord_api import bot_gateway, point_discord_at
from herwa.logs import register_secret, register_url
from herwa.stores import clickhouse_client, postgres_pool, redis_client
from herwa.telemetry import TelemetryServer, setup_tracing

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pod-name", help="override HERWA_BOT_POD_NAME")


def run(args: argparse.Namespace) -> int:
    # uvloop: a shard reads one websocket frame per event, so the event loop's own cost per
    # iteration is a large share of capture (figures: benchmarks/README.md).
    return uvloop.run(main(getattr(args, "pod_name", None)))


def pod_identity(configured: str | None) -> str:
    return configured or socket.gethostname().lower()


async def main(pod_override: str | None = None) -> int:
    bot = config.bot()
    disc = config.discord()
    token = disc.require_token().get_secret_value()
    register_secret(token)
    pg = config.postgres()
    rd = config.redis()
    ch = config.clickhouse()
    commands = config.commands()
    guild_timezone = config.guild_defaults().timezone
    tel = config.telemetry()
    for url in (pg.dsn, rd.url, ch.query_url()):
        register_url(url.get_secret_value())
    point_discord_at(disc.api_base, disc.gateway_url)
    setup_tracing("herwa-bot")
    pod = pod_identity(pod_override or bot.pod_name)

    shard_count = disc.shard_count
    max_concurrency = bot.max_concurrency
    if shard_count is None or max_concurrency is None or disc.gateway_url is None:
        gateway = await bot_gateway(token)
        shard_count = shard_count or gateway.shards
        max_concurrency = max_concurrency or gateway.max_concurrency
        if disc.gateway_url is None:
            point_discord_at(None, gateway.url)

    # One connection more than configured: the guild-settings listener holds one for good.
    pool = await postgres_pool(pg.model_copy(update={"pool_max_size": pg.pool_max_size + 1}))
    # A call that outlives a good part of the lease would let the lease lapse unnoticed.
    redis = redis_client(
        rd, socket_timeout=min(rd.socket_timeout_seconds, bot.member_ttl_seconds / 5)
    )
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
            default_timezone=guild_timezone,
        ),
        guild_timezone=guild_timezone,
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
        if tel.port == 0:
            # Tests and supervisors read this stdout line to find the port the OS chose; a
            # deployment sets the port, so its pods' output stays JSON log lines only.
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
