"""``herwa simulate``: the simulator as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from herwa.simulator._gateway import GatewayConfig
from herwa.simulator._simulator import DEFAULT_TOKEN, Simulator, SimulatorConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="127.0.0.1 port (0: any free one)")
    parser.add_argument("--guilds", type=int, default=3, help="number of simulated guilds")
    parser.add_argument("--seed", type=int, default=1, help="scenario seed (same seed, same run)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events per second to emit from the start (0: only when driven)",
    )
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the bot token to accept")
    parser.add_argument(
        "--history-days",
        type=float,
        default=0.0,
        help="create this many days of past messages (channel history)",
    )
    parser.add_argument(
        "--history-per-day", type=int, default=500, help="past messages per day with --history-days"
    )
    parser.add_argument(
        "--replay-days",
        type=float,
        default=0.0,
        help="live events start this many days ago and run --speed times faster",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=3600.0,
        help="virtual seconds per wall second while replaying",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help="recommended shard count in GET /gateway/bot (0: Discord's rule)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="IDENTIFY max_concurrency (one identify per bucket per 5 s)",
    )
    parser.add_argument(
        "--no-message-content",
        action="store_true",
        help="the app has not enabled MESSAGE_CONTENT (requesting it: 4014)",
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from herwa.simulator._gateway import GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT

    privileged = GUILD_MEMBERS | GUILD_PRESENCES
    if not args.no_message_content:
        privileged |= MESSAGE_CONTENT
    cfg = SimulatorConfig(
        seed=args.seed,
        guilds=args.guilds,
        token=args.token,
        port=args.port,
        recommended_shards=args.shards or None,
        privileged_intents=privileged,
        gateway=GatewayConfig(max_concurrency=args.max_concurrency),
    )
    sim = Simulator(cfg)
    await sim.start()
    if args.history_days:
        n = sim.create_history(days=args.history_days, messages_per_day=args.history_per_day)
        print(f"created {n} historical messages", flush=True)
    print(f"Discord simulator listening on {sim.url}", flush=True)
    print("Settings for the bot:", flush=True)
    for k, v in sim.env().items():
        print(f"export {k}={v}", flush=True)
    print(f"Control API: {sim.url}/_sim/ (ledger, activity, faults, interactions)", flush=True)
    if args.rate:
        replay = None
        if args.replay_days:
            replay = int(time.time() * 1000 - args.replay_days * 86_400_000)
        sim.start_activity(args.rate, replay_from_ms=replay, speed=args.speed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()
    print("simulator stopped", file=sys.stderr, flush=True)
    return 0
