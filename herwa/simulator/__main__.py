"""``python -m herwa.simulator``: the same as ``herwa simulate``."""

from __future__ import annotations

import argparse
import sys

from herwa.simulator import cli


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m herwa.simulator", description="run the Discord simulator standalone"
    )
    cli.configure(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
