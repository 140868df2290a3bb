"""Telemetry: one port for metrics and health, and traces exported where OTEL_* points."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry, Counter

from herwa.devstack import Endpoints
from herwa.telemetry import Readiness, TelemetryServer


async def test_metrics_health_and_readiness_on_one_port() -> None:
    registry = CollectorRegistry()
    Counter("herwa_test_things", "things counted", registry=registry).inc(3)
    ready = Readiness(False, {"shards": "1/2 connected"})

    async def readiness() -> Readiness:
        return ready

    async with TelemetryServer("127.0.0.1", 0, readiness=readiness, registry=registry) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert "herwa_test_things_total 3.0" in await response.text()
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert await response.json() == {"ready": False, "shards": "1/2 connected"}
            ready = Readiness(True)
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200


async def test_a_failing_readiness_check_means_not_ready() -> None:
    async def readiness() -> Readiness:
        raise ConnectionError("redis down")

    async with (
        TelemetryServer("127.0.0.1", 0, readiness=readiness) as server,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}/readyz") as response,
    ):
        assert response.status == 503
        assert await response.json() == {"ready": False, "error": "ConnectionError"}


_TRACED_PROGRAM = textwrap.dedent(
    """
    from herwa.telemetry import setup_tracing, tracer
    provider = setup_tracing("herwa-test")
    with tracer("herwa.test").start_as_current_span("staging.flush") as span:
        span.set_attribute("rows", 42)
    provider.shutdown()
    """
)


async def _run_traced_program(env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TRACED_PROGRAM, env={**os.environ, **env}
    )
    return await asyncio.wait_for(process.wait(), 60)


async def test_spans_reach_the_configured_otlp_endpoint() -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        code = await _run_traced_program(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": ""}
        )
    finally:
        await runner.cleanup()
    assert code == 0
    spans = [
        (span.name, resource.resource)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [name for name, _ in spans] == ["staging.flush"]
    attributes = {a.key: a.value.string_value for a in spans[0][1].attributes}
    assert attributes["service.name"] == "herwa-test"


async def test_no_endpoint_means_no_exporter_and_no_error() -> None:
    env = {key: "" for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")}
    assert await _run_traced_program(env) == 0


class _Collector:
    """An OTLP/HTTP trace endpoint on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[ExportTraceServiceRequest] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> _Collector:
        async def collect(request: web.Request) -> web.Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.read())
            self.received.append(message)
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/v1/traces", collect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def spans(self) -> dict[str, str]:
        """span name → trace id (hex)."""
        return {
            span.name: span.trace_id.hex()
            for request in self.received
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        }


async def _herwa(*args: str, env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herwa.cli",
        *args,
        env={**os.environ, **env, "HERWA_TELEMETRY_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode is not None
    # Every line either stream carries is a JSON log line: no print() mixed in.
    lines = [json.loads(line) for line in (stdout + stderr).decode().splitlines()]
    return process.returncode, lines


async def test_migrate_and_the_etl_make_spans_and_log_their_trace_id(
    endpoints: Endpoints,
) -> None:
    async with _Collector() as collector:
        env = {**endpoints.as_env(), "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
        env["OTEL_SDK_DISABLED"] = "false"
        code, migrate_log = await _herwa("migrate", env=env)
        assert code == 0, migrate_log
        code, etl_log = await _herwa("etl", "run", env=env)
        assert code == 0, etl_log
    spans = collector.spans()
    assert {"migrate", "etl.run", "etl.privacy", "etl.sync", "etl.rollups", "etl.cleanup"} <= set(
        spans
    )
    (done,) = [line for line in migrate_log if line["msg"] == "migrations done"]
    assert done["trace_id"] == spans["migrate"]
    (finished,) = [line for line in etl_log if line["msg"] == "etl run finished"]
    assert finished["trace_id"] == spans["etl.run"]
    assert spans["etl.sync"] == spans["etl.run"]  # the phases are children of the run
