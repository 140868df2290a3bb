"""Telemetry: one port for metrics and health, and traces exported where OTEL_* points."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry, Counter

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
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
