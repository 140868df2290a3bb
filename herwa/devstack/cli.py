"""`herwa dev up|down|status`: the embedded stack for local development.

`up` leaves the servers running detached and prints `export HERWA_...=...` lines, so
`eval "$(herwa dev up)"` configures the current shell.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from herwa.devstack import DevStack, DevStackError

DEFAULT_DATA_DIR = Path(".herwa/devstack")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dev_action", metavar="{up,down,status}")
    actions.required = True
    helps = {
        "up": "start (or reuse) the servers, detached; print the endpoints as shell exports",
        "down": "stop the servers (data is kept)",
        "status": "report whether each server runs and answers a query",
    }
    for name, text in helps.items():
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=DEFAULT_DATA_DIR,
            help="where data, logs, passwords and state live "
            "(default: %(default)s, relative to the current directory)",
        )
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir))
    action: str = args.dev_action
    try:
        if action == "up":
            return _up(stack, as_json=args.json)
        if action == "down":
            stack.down()
            if args.json:
                print(json.dumps({"stopped": True}))
            else:
                print(f"# devstack in {stack.data_dir} stopped", file=sys.stderr)
            return 0
        if action == "status":
            return _status(stack, as_json=args.json)
    except DevStackError as exc:
        print(f"herwa dev {action}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unknown action {action!r}")


def _up(stack: DevStack, *, as_json: bool) -> int:
    endpoints = stack.up(detach=True)
    env = endpoints.as_env()
    if as_json:
        payload = {**env, "HERWA_CLICKHOUSE_NATIVE_PORT": str(endpoints.clickhouse_native_port)}
        print(json.dumps(payload, indent=2))
    else:
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        # On stderr so that `eval "$(herwa dev up)"` only sees the exports.
        print(
            f"# devstack running from {stack.data_dir}; stop with: herwa dev down "
            f"--data-dir {shlex.quote(str(stack.data_dir))}",
            file=sys.stderr,
        )
    return 0


def _status(stack: DevStack, *, as_json: bool) -> int:
    statuses = stack.status()
    if as_json:
        print(json.dumps({name: st.as_dict() for name, st in statuses.items()}, indent=2))
    else:
        for name, st in statuses.items():
            state = "answering" if st.answering else ("alive" if st.alive else "down")
            where = st.url or "-"
            pid = st.pid if st.pid is not None else "-"
            print(f"{name:<11} {state:<10} pid={pid:<8} {where}  {st.detail.splitlines()[0]}")
    return 0 if all(st.answering for st in statuses.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herwa dev", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
