"""The embedded service stack: real Postgres, Redis and ClickHouse servers from pip wheels.

Used by `herwa dev up|down|status`, the demo and the test fixtures. Servers listen on free
127.0.0.1 ports only; all data, logs, passwords (0600) and the state file live in one data dir.
"""

from herwa.devstack._probes import clickhouse_query, postgres_execute, postgres_query, run_sync
from herwa.devstack._process import DevStackError, Launch, is_alive
from herwa.devstack._services import RedisService
from herwa.devstack._stack import DevStack, Endpoints, ServiceStatus

__all__ = [
    "DevStack",
    "DevStackError",
    "Endpoints",
    "Launch",
    "RedisService",
    "ServiceStatus",
    "clickhouse_query",
    "is_alive",
    "postgres_execute",
    "postgres_query",
    "run_sync",
]
