"""Entry point of the ClickHouse server subprocess: `python -I _clickhouse_server.py DATA_DIR`.

chdb-core embeds ClickHouse as a library whose one-shot clickhouse-local call can be told to
start the HTTP and native listeners configured in `config.xml` of the current directory. A
final statement that blocks forever keeps those listeners serving; SIGTERM ends the process.

The devstack runs this file by path (not `-m herwa.devstack...`) with `-I`, so nothing from the
caller's working directory lands on sys.path (a checkout's top-level `operator/` folder would
shadow the standard library). It must therefore import nothing but the standard library and
chdb.
"""

from __future__ import annotations

import sys
from typing import Any

# Reading the result (sum) forces every row through sleepEachRow; with one row per block and no
# per-block cap this sleeps for ~31 000 years at ~0 % CPU.
_SERVE_SQL = (
    "SYSTEM START LISTEN HTTP; "
    "SYSTEM START LISTEN TCP; "
    "SELECT sum(sleepEachRow(1)) FROM numbers(1000000000000) "
    "SETTINGS function_sleep_max_microseconds_per_block = 0, max_block_size = 1"
)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: _clickhouse_server.py DATA_DIR", file=sys.stderr)
        return 2
    # SIGTERM keeps its default action on purpose: the blocking query runs in native code, so
    # a Python-level handler would never get to run. Data is on disk (it survives even SIGKILL).
    import importlib

    # The native module ships no stubs; importing `chdb` first also runs its own start-up.
    chdb_native: Any = importlib.import_module("chdb._chdb")

    # TabSeparated becomes the server's default output format; clickhouse-connect misreads
    # the server version with anything else.
    result = chdb_native.query(_SERVE_SQL, "TabSeparated", path=argv[0])
    # Reaching this line means the listeners failed (e.g. port taken): the error text is on
    # stderr already; exit non-zero so the supervisor sees a failed start.
    print(f"clickhouse serve statement returned: {result!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
