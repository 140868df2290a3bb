"""The ``herwa`` command: one entry point, one image, every role.

Each subcommand lives in its role's own ``cli`` module, which exposes
``configure(parser)`` and ``run(args) -> int``; only the chosen one is imported, so
``herwa etl run`` never pays for importing discord.py. The development tools (``dev``,
``simulate``, ``demo``) are in a checkout's install only, not in the wheel or the image.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from herwa import __version__, config
from herwa.logs import setup_logging

log = logging.getLogger(__name__)

# name → (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bot": ("herwa.bot.cli", "run a bot pod: capture gateway events of the shards it owns"),
    "etl": ("herwa.etl.cli", "move staged events from Postgres into ClickHouse"),
    "operator": ("herwa.operator.cli", "run the GuildSubscription operator (kopf)"),
    "migrate": ("herwa.schema.cli", "apply the Postgres and ClickHouse schema migrations"),
    "reshard": ("herwa.bot.reshard", "set the bot fleet's shard count (blue/green cut-over)"),
    "seed": ("herwa.operator.seed_cli", "seed tiers, features and commands into Postgres"),
    "check": ("herwa.check", "check that every role is ready (the chart's helm test)"),
    "dev": ("herwa.devstack.cli", "start/stop embedded Postgres, Redis and ClickHouse"),
    "simulate": ("herwa.simulator.cli", "run the Discord simulator standalone"),
    "demo": ("herwa.demo", "run the whole pipeline end to end on this machine"),
}

# Left out of the wheel (pyproject's packages.find exclude): the product never imports them.
DEV_PACKAGES = ("herwa.devstack", "herwa.simulator", "herwa.demo")

EXIT_CONFIG_ERROR = 2
EXIT_NOT_INSTALLED = 2


def _load(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name][0])


def dev_package(name: str) -> str | None:
    """The development package a subcommand runs from; None for the product's roles."""
    module = SUBCOMMANDS[name][0]
    return next(
        (p for p in DEV_PACKAGES if module == p or module.startswith(p + ".")),
        None,
    )


def installed(name: str) -> bool:
    """False for a development tool's subcommand where its package is not installed."""
    package = dev_package(name)
    return package is None or importlib.util.find_spec(package) is not None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herwa",
        description="Herwa: Kubernetes-native analytics for Discord communities. "
        "Configuration comes from HERWA_* environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"herwa {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, summary) in SUBCOMMANDS.items():
        if not installed(name):
            summary += " (development tool: not installed here)"
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if name == only and installed(name):
            _load(name).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    if chosen in SUBCOMMANDS and not installed(chosen):
        setup_logging()
        log.error(
            "herwa %s: a development tool, not part of this installation (the herwa wheel "
            "and image carry the product only); run it from a checkout: scripts/bootstrap, "
            "then .venv/bin/herwa %s",
            chosen,
            chosen,
        )
        return EXIT_NOT_INSTALLED
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(args_list)
    try:
        telemetry = config.telemetry()
    except config.ConfigError as exc:
        setup_logging()  # the defaults: the error is still a JSON line like every other
        return _config_error(args.command, exc)
    setup_logging(telemetry.log_level, telemetry.log_format)
    try:
        code: int = _load(args.command).run(args)
    except config.ConfigError as exc:
        return _config_error(args.command, exc)
    except KeyboardInterrupt:
        return 130
    return code


def _config_error(command: str, exc: config.ConfigError) -> int:
    log.error("herwa %s: configuration error: %s", command, exc)
    return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
