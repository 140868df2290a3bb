"""The servers a benchmark runs against: the HERWA_* ones where configured, embedded otherwise.

DevStack uses every store given by URL and starts only the missing ones, in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from herwa.devstack import DevStack, Endpoints


@contextmanager
def bench_stores() -> Iterator[Endpoints]:
    data_dir = Path(tempfile.mkdtemp(prefix="herwa-bench-"))
    stack = DevStack(
        data_dir,
        postgres_dsn=os.environ.get("HERWA_POSTGRES_DSN"),
        redis_url=os.environ.get("HERWA_REDIS_URL"),
        clickhouse_url=os.environ.get("HERWA_CLICKHOUSE_URL"),
        clickhouse_readonly_url=os.environ.get("HERWA_CLICKHOUSE_READONLY_URL"),
    )
    try:
        yield stack.up()
    finally:
        stack.down()
        shutil.rmtree(data_dir, ignore_errors=True)
