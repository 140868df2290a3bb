"""``herwa seed``: write the platform's tiers, features and commands into Postgres (idempotent)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from herwa import config, platform
from herwa.stores import postgres_connection

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        default=None,
        help="platform YAML (default: HERWA_OPERATOR_PLATFORM_FILE if it exists, "
        "else the definition shipped with Herwa)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only validate the file; do not connect to Postgres"
    )


def _path(args: argparse.Namespace) -> str | None:
    if args.file:
        return str(args.file)
    import os

    configured = config.operator().platform_file
    return configured if os.path.exists(configured) else None


def run(args: argparse.Namespace) -> int:
    try:
        plat = platform.load(_path(args))
    except platform.PlatformError as exc:
        log.error("invalid platform file: %s", exc)
        return 2
    if args.check:
        log.info(
            "platform file ok",
            extra={
                "tiers": len(plat.tiers),
                "features": len(plat.features),
                "commands": len(plat.commands),
            },
        )
        return 0
    report = asyncio.run(_seed(config.postgres(), plat))
    log.info(
        "platform seeded",
        extra={
            "features": report.features,
            "tiers": report.tiers,
            "tier_features": report.tier_features,
            "commands": report.commands,
            "changed": report.changed,
            "kept_tiers": list(report.kept_tiers),
        },
    )
    return 0


async def _seed(pg: config.PostgresSettings, plat: platform.Platform) -> platform.SeedReport:
    conn = await postgres_connection(pg.dsn, timeout=pg.connect_timeout_seconds)
    try:
        return await platform.seed(conn, plat)
    finally:
        await conn.close()
