"""``herwa demo``: the whole pipeline end to end on this machine, no Docker, no Discord, no cluster.

Stages: embedded Postgres/Redis/ClickHouse → migrations → tiers and subscriptions (through the
operator's reconcile code) → the Discord simulator with a community and its channel history →
two ``herwa bot`` processes sharing four shards → backfill of the history → live traffic that
replays weeks of activity in seconds (voice in real time at the end) → Postgres equals the
simulator's ledger → ETL into ClickHouse (ClickHouse equals Postgres) → slash commands through the
simulator, every number they answer equal to the ledger, their PNG charts saved → a report in a
results folder → everything stopped.

Re-running on the same data dir reuses the servers, passwords, ports, schema and tiers, and
empties the previous run's events first, so every run reconciles with its own ledger;
``--reset`` deletes the data dir instead. Ctrl-C at any point stops everything; exit code 130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from herwa.demo import _checks, _report
from herwa.demo._checks import online_checks
from herwa.demo._console import Console
from herwa.demo._pipeline import Demo
from herwa.demo._run import DemoFailed, DemoOptions
from herwa.demo._setup import KEEP_TABLES, clear_previous_run

__all__ = [
    "KEEP_TABLES",
    "Console",
    "Demo",
    "DemoFailed",
    "DemoOptions",
    "clear_previous_run",
    "configure",
    "main",
    "online_checks",
    "options",
    "run",
    "write_report",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
STAGES = 11


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guilds", type=int, default=300, help="simulated guilds (%(default)s)")
    parser.add_argument(
        "--history-days",
        type=float,
        default=14.0,
        help="days of history: channel history to backfill and the span the "
        "live traffic replays (%(default)s, at most 29)",
    )
    parser.add_argument(
        "--messages-per-day",
        type=int,
        default=2000,
        help="historical messages per day, all guilds together (%(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=40.0, help="seconds of live traffic (%(default)s)"
    )
    parser.add_argument(
        "--rate", type=float, default=400.0, help="live events per second (%(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".herwa/demo"),
        help="the embedded servers' data (%(default)s)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where the report and charts go (default: results/demo-<timestamp>)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="delete the data dir first (fresh servers); without it the servers "
        "are reused and the previous run's events are emptied",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the report, leave the stack, simulator and bots up (with "
        "light traffic and an ETL run every 15 s) until Ctrl-C",
    )
    parser.add_argument("--seed", type=int, default=7, help="scenario seed (%(default)s)")
    parser.add_argument(
        "--showcase-members",
        type=int,
        default=3000,
        help="members of the showcase server, the large one whose charts the report shows "
        "(%(default)s; 0: no showcase server)",
    )
    parser.add_argument(
        "--showcase-messages-per-day",
        type=int,
        default=2500,
        help="the showcase's historical messages per day (%(default)s)",
    )
    parser.add_argument(
        "--showcase-weeks",
        type=int,
        default=8,
        help="weeks of the showcase's newcomers, joins and messages (%(default)s, 1 to 12)",
    )


def options(args: argparse.Namespace) -> DemoOptions:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    checks = [
        (args.guilds >= 3, "--guilds must be at least 3 (three guilds get subscriptions)"),
        (
            0 < args.history_days <= 29,
            "--history-days must be in (0, 29] (backfill reaches back 30 days at most)",
        ),
        (args.messages_per_day >= 0, "--messages-per-day must not be negative"),
        (args.duration >= 5, "--duration must be at least 5 seconds"),
        (args.rate > 0, "--rate must be positive"),
        (args.showcase_members >= 0, "--showcase-members must not be negative"),
        (args.showcase_messages_per_day >= 0, "--showcase-messages-per-day must not be negative"),
        (1 <= args.showcase_weeks <= 12, "--showcase-weeks must be in [1, 12]"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"herwa demo: {message}")
    return DemoOptions(
        guilds=args.guilds,
        history_days=args.history_days,
        messages_per_day=args.messages_per_day,
        duration=args.duration,
        rate=args.rate,
        data_dir=args.data_dir,
        results=args.results or Path("results") / f"demo-{stamp}",
        reset=args.reset,
        keep_running=args.keep_running,
        seed=args.seed,
        showcase_members=args.showcase_members,
        showcase_messages_per_day=args.showcase_messages_per_day,
        showcase_weeks=args.showcase_weeks,
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(main(options(args)))


def _log_to_file(path: Path) -> None:
    """The components' own logs go to a file: the terminal shows the demo's progress only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


async def main(opts: DemoOptions) -> int:
    _log_to_file(opts.results / "logs" / "demo.log")
    console = Console(STAGES)
    demo = Demo(opts, console)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("main() must run as a task")
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if demo.stopping:
            console.line("      (already stopping — waiting for the processes to exit)")
            return
        interrupted = True
        demo.stopping = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    outcome = "failed"
    error = ""
    console.line(
        f"Herwa demo: {opts.guilds} guilds, {opts.history_days:g} days of history, "
        f"{opts.duration:g}s of traffic at ~{opts.rate:g} events/s"
    )
    try:
        await demo.run()
        outcome = "ok" if all(c.ok for c in demo.checks) else "failed"
        if opts.keep_running:
            write_report(demo, "running", None)
            console.line(f"Report: {(opts.results / 'index.html').absolute()}")
            await demo.explore()
    except asyncio.CancelledError:
        task.uncancel()
        # With --keep-running, Ctrl-C is how a successful demo ends: keep its outcome.
        if not (opts.keep_running and outcome == "ok"):
            outcome = "interrupted"
        interrupted = outcome == "interrupted"
    except DemoFailed as exc:
        error = str(exc)
    except Exception as exc:  # any failure still stops every process below
        error = f"{type(exc).__name__}: {exc}"
    if interrupted:
        outcome = "interrupted"
    if error:
        console.line(f"✗ {error}")
    with console.stage("shutdown", "Stop bots, simulator and servers") as st:
        shutdown = await demo.shutdown()
        left = shutdown["left_running"]
        codes = {n: b["exit_code"] for n, b in shutdown["bots"].items()}
        st.ok = not left and all(c == 0 for c in codes.values())
        st.numbers = shutdown
        st.summary = (f"bots exited with {codes}; " if codes else "") + (
            "no process left" if not left else f"still running: {', '.join(left)}"
        )
    if not st.ok and outcome == "ok":
        outcome = "failed"
    write_report(demo, outcome, shutdown)
    _summary(demo, console, outcome)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    if outcome == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome == "ok" else EXIT_FAILED


def write_report(demo: Demo, outcome: str, shutdown: dict[str, object] | None) -> None:
    opts = demo.opts
    ledger = None
    if demo.sim is not None:
        ledger = {k: v for k, v in demo.sim.ledger.summary().items() if k != "guilds"}
        ledger["totals"] = _checks.asdict_ledger(demo.sim)
    report = _report.build(
        options={
            "guilds": opts.guilds,
            "history_days": opts.history_days,
            "messages_per_day": opts.messages_per_day,
            "duration": opts.duration,
            "rate": opts.rate,
            "data_dir": str(opts.data_dir.absolute()),
            "reset": opts.reset,
            "keep_running": opts.keep_running,
            "seed": opts.seed,
            "showcase_members": opts.showcase_members,
            "showcase_messages_per_day": opts.showcase_messages_per_day,
            "showcase_weeks": opts.showcase_weeks,
        },
        stages=demo.console.stages,
        checks=demo.checks,
        commands=demo.commands,
        images=demo.images,
        ledger=ledger,
        shutdown=shutdown,
        outcome=outcome,
        started_at=demo.started_at.isoformat(timespec="seconds"),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        version=demo.version(),
    )
    _report.write(opts.results, report)


def _summary(demo: Demo, console: Console, outcome: str) -> None:
    total = sum(s.seconds for s in console.stages)
    good = sum(c.ok for c in demo.checks)
    console.line("")
    console.line(
        f"Herwa demo {outcome} in {total:.0f}s: {good} of {len(demo.checks)} numbers "
        "reconcile with the simulator's ledger."
    )
    for s in console.stages:
        mark = "✓" if s.ok else ("✗" if s.ok is False else "…")
        console.line(f"  {mark} {s.title:<48} {s.seconds:6.1f}s")
    results = demo.opts.results.absolute()
    console.line(
        f"Results: {results}  (index.html, report.md, report.json"
        + (", " + ", ".join(demo.images.values()) if demo.images else "")
        + ")"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="herwa demo", description=__doc__)
    configure(parser)
    sys.exit(run(parser.parse_args()))
