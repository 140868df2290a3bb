"""The DevStack orchestrator: state file, secrets, start/reuse/stop of the three servers."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from herwa.devstack import _probes
from herwa.devstack._process import (
    DevStackError,
    free_port,
    is_alive,
    log_size,
    log_tail,
    port_is_free,
    process_start_time,
    spawn,
    stop_process,
)
from herwa.devstack._services import (
    ClickHouseService,
    PostgresService,
    RedisService,
    Service,
)

SERVICE_NAMES = ("postgres", "redis", "clickhouse")
_START_TIMEOUT = 90.0
_BIND_RETRIES = 3
_STATE_FILE = "state.json"
_SECRETS_FILE = "secrets.json"


@dataclass(frozen=True)
class Endpoints:
    """Where the stores are, as clients expect them (passwords included)."""

    postgres_dsn: str
    redis_url: str
    clickhouse_url: str
    clickhouse_readonly_url: str
    clickhouse_native_port: int

    def as_env(self) -> dict[str, str]:
        return {
            "HERWA_POSTGRES_DSN": self.postgres_dsn,
            "HERWA_REDIS_URL": self.redis_url,
            "HERWA_CLICKHOUSE_URL": self.clickhouse_url,
            "HERWA_CLICKHOUSE_READONLY_URL": self.clickhouse_readonly_url,
        }


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    managed: bool  # False: an external server given by DSN/URL
    pid: int | None
    alive: bool  # the process runs (external: same as answering)
    answering: bool  # it answered a real query just now
    url: str  # password redacted
    log_path: str | None
    detail: str  # server version, or why it is not answering

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Running:
    pid: int
    start_time: int | None
    ports: dict[str, int]


@dataclass
class _State:
    running: dict[str, _Running] = field(default_factory=dict)
    # Ports of the last run, kept after `down` so a restart reuses them and old DSNs still work.
    ports: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _State:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise DevStackError(f"unreadable devstack state file {path}: {exc}") from exc
        running = {
            name: _Running(
                pid=int(item["pid"]),
                start_time=item.get("start_time"),
                ports={k: int(v) for k, v in item["ports"].items()},
            )
            for name, item in raw.get("running", {}).items()
        }
        ports = {
            name: {k: int(v) for k, v in item.items()}
            for name, item in raw.get("ports", {}).items()
        }
        return cls(running=running, ports=ports)

    def save(self, path: Path) -> None:
        payload = {
            "running": {name: asdict(r) for name, r in self.running.items()},
            "ports": self.ports,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


@dataclass
class _Pending:
    service: Service
    ports: dict[str, int]
    pid: int
    start_time: int | None
    popen: subprocess.Popen[bytes] | None
    log_offset: int
    attempt: int = 1
    last_error: str = "no answer yet"


class DevStack:
    """Postgres, Redis and ClickHouse on free loopback ports, with all data under `data_dir`.

    Any store given by DSN/URL is used as is and no server of that kind is started. `up()`
    without `detach` ties the servers to this object (stopped by `down()`, the context manager
    or, as a last resort, interpreter exit); with `detach=True` they outlive the process and are
    found again through the state file by a later `DevStack(data_dir)`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        postgres_dsn: str | None = None,
        redis_url: str | None = None,
        clickhouse_url: str | None = None,
        clickhouse_readonly_url: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._external: dict[str, str] = {}
        if postgres_dsn:
            self._external["postgres"] = postgres_dsn
        if redis_url:
            self._external["redis"] = redis_url
        if clickhouse_url:
            self._external["clickhouse"] = clickhouse_url
        # Without a separate read-only URL an external ClickHouse is used read-write for both.
        self._clickhouse_readonly_url = clickhouse_readonly_url or clickhouse_url
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._atexit_registered = False

    # -- public API ---------------------------------------------------------------------------

    def up(self, *, detach: bool = False) -> Endpoints:
        with self._locked():
            state = _State.load(self._state_path)
            services = self._services()
            pending: dict[str, _Pending] = {}
            started: list[str] = []
            try:
                for name, service in services.items():
                    if name in self._external:
                        continue
                    running = state.running.get(name)
                    if running is not None and is_alive(running.pid, running.start_time):
                        pending[name] = _Pending(
                            service,
                            running.ports,
                            running.pid,
                            running.start_time,
                            self._popens.get(name),
                            log_size(service.log_path),
                        )
                        continue
                    # Stale entry (process gone): forget it, start afresh.
                    state.running.pop(name, None)
                    service.prepare()
                    pending[name] = self._start(service, self._pick_ports(service, state))
                    started.append(name)
                    self._record(state, pending[name])
                if started and not detach:
                    self._register_atexit()
                self._wait(pending, state)
            except BaseException:
                for name in started:
                    self._stop_one(name, state, services[name])
                raise
            self._check_external()
            return self._endpoints(state, services)

    def down(self) -> None:
        # Never create anything here: the exit hook may run after the dir was deleted.
        if self._state_path.exists():
            with self._locked():
                state = _State.load(self._state_path)
                services = self._services(create_secrets=False)
                for name in list(state.running):
                    self._stop_one(name, state, services[name])
        if self._atexit_registered:
            atexit.unregister(self._down_at_exit)
            self._atexit_registered = False

    def status(self) -> dict[str, ServiceStatus]:
        state = _State.load(self._state_path)
        services = self._services(create_secrets=False)
        result: dict[str, ServiceStatus] = {}
        for name, service in services.items():
            if name in self._external:
                url = self._external[name]
                answering, detail = _try_probe(functools.partial(_probe_url, name, url))
                result[name] = ServiceStatus(
                    name, False, None, answering, answering, _probes.redact(url), None, detail
                )
                continue
            running = state.running.get(name)
            if running is None:
                result[name] = ServiceStatus(
                    name, True, None, False, False, "", str(service.log_path), "not running"
                )
                continue
            alive = is_alive(running.pid, running.start_time)
            answering, detail = (
                _try_probe(functools.partial(service.probe, running.ports))
                if alive
                else (False, "process is gone (stale state)")
            )
            result[name] = ServiceStatus(
                name,
                True,
                running.pid,
                alive,
                answering,
                _probes.redact(service.url(running.ports)),
                str(service.log_path),
                detail,
            )
        return result

    def __enter__(self) -> Endpoints:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- internals ----------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.data_dir / _STATE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down on one data dir across processes."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.data_dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _secrets(self, *, create: bool = True) -> dict[str, str]:
        """Passwords generated once per data dir, so DSNs survive restarts."""
        path = self.data_dir / _SECRETS_FILE
        try:
            loaded: dict[str, str] = json.loads(path.read_text())
        except FileNotFoundError:
            loaded = {}
        wanted = ("postgres", "clickhouse", "clickhouse_ro")
        if not create or all(key in loaded for key in wanted):
            return loaded
        for key in wanted:
            # URL-safe alphabet: the passwords go verbatim into DSNs and XML.
            loaded.setdefault(key, secrets.token_urlsafe(24))
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(loaded, fh, indent=2)
        return loaded

    def _services(self, *, create_secrets: bool = True) -> dict[str, Service]:
        root, creds = self.data_dir, self._secrets(create=create_secrets)
        return {
            "postgres": PostgresService(root, creds),
            "redis": RedisService(root, creds),
            "clickhouse": ClickHouseService(root, creds),
        }

    def _pick_ports(self, service: Service, state: _State) -> dict[str, int]:
        previous = state.ports.get(service.name, {})
        if set(previous) == set(service.port_names) and all(
            port_is_free(p) for p in previous.values()
        ):
            return dict(previous)
        return self._fresh_ports(service)

    @staticmethod
    def _fresh_ports(service: Service) -> dict[str, int]:
        ports: dict[str, int] = {}
        for port_name in service.port_names:
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[port_name] = port
        return ports

    def _start(self, service: Service, ports: dict[str, int], attempt: int = 1) -> _Pending:
        offset = log_size(service.log_path)
        popen = spawn(service.launch(ports), service.log_path)
        self._popens[service.name] = popen
        return _Pending(
            service, ports, popen.pid, process_start_time(popen.pid), popen, offset, attempt
        )

    def _record(self, state: _State, pending: _Pending) -> None:
        # Saved before waiting, so a crash mid-start still leaves the pid for `down` to find.
        state.running[pending.service.name] = _Running(
            pending.pid, pending.start_time, pending.ports
        )
        state.ports[pending.service.name] = dict(pending.ports)
        state.save(self._state_path)

    def _wait(self, pending: dict[str, _Pending], state: _State) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        waiting = dict(pending)
        while waiting:
            for name, item in list(waiting.items()):
                if item.popen is not None:
                    item.popen.poll()
                if not is_alive(item.pid, item.start_time):
                    tail = log_tail(item.service.log_path, offset=item.log_offset)
                    if "already in use" in tail.lower() and item.attempt < _BIND_RETRIES:
                        # Lost the race for the port between choosing and binding: new ports.
                        waiting[name] = self._start(
                            item.service, self._fresh_ports(item.service), item.attempt + 1
                        )
                        self._record(state, waiting[name])
                        continue
                    code = item.popen.returncode if item.popen is not None else None
                    raise DevStackError(
                        f"{name} server exited during start-up (exit code {code}); "
                        f"log {item.service.log_path}:\n{tail}"
                    )
                try:
                    item.service.probe(item.ports)
                    item.service.finish(item.ports)
                except Exception as exc:
                    item.last_error = f"{type(exc).__name__}: {exc}"
                    continue
                del waiting[name]
            if not waiting:
                return
            if time.monotonic() > deadline:
                name, item = next(iter(waiting.items()))
                raise DevStackError(
                    f"{name} server (pid {item.pid}) did not answer within "
                    f"{_START_TIMEOUT:.0f}s: {item.last_error}; log {item.service.log_path}:\n"
                    f"{log_tail(item.service.log_path, offset=item.log_offset)}"
                )
            time.sleep(0.1)

    def _stop_one(self, name: str, state: _State, service: Service) -> None:
        running = state.running.get(name)
        if running is not None:
            stop_process(
                running.pid,
                running.start_time,
                first_signal=service.stop_signal,
                popen=self._popens.get(name),
            )
            state.running.pop(name, None)
            state.save(self._state_path)
        self._popens.pop(name, None)

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._down_at_exit)
            self._atexit_registered = True

    def _down_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.down()

    def _check_external(self) -> None:
        for name, url in self._external.items():
            ok, detail = _try_probe(functools.partial(_probe_url, name, url))
            if not ok:
                raise DevStackError(
                    f"external {name} at {_probes.redact(url)} does not answer: {detail}"
                )

    def _endpoints(self, state: _State, services: dict[str, Service]) -> Endpoints:
        def url_of(name: str) -> str:
            if name in self._external:
                return self._external[name]
            return services[name].url(state.running[name].ports)

        if "clickhouse" in self._external:
            readonly = self._clickhouse_readonly_url or self._external["clickhouse"]
            native_port = 9000  # not derivable from an HTTP URL; ClickHouse's default
        else:
            ports = state.running["clickhouse"].ports
            readonly = ClickHouseService.readonly_url_for(ports, self._secrets())
            native_port = ports["tcp_port"]
        return Endpoints(
            postgres_dsn=url_of("postgres"),
            redis_url=url_of("redis"),
            clickhouse_url=url_of("clickhouse"),
            clickhouse_readonly_url=readonly,
            clickhouse_native_port=native_port,
        )


def _probe_url(name: str, url: str) -> str:
    if name == "postgres":
        return _probes.probe_postgres(url)
    if name == "redis":
        return _probes.probe_redis(url)
    return _probes.probe_clickhouse(url)


def _try_probe(probe: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, probe()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
