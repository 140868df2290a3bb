"""Metrics, health and tracing, the same way for every role.

Every long-running role serves ``/metrics`` (Prometheus), ``/healthz`` (the process and its event
loop are alive) and ``/readyz`` (the role's own readiness check) on one port. Tracing is set up
from the standard ``OTEL_*`` environment variables: an OTLP/HTTP exporter when an endpoint is
configured, nothing otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: dict[str, object] = field(default_factory=dict)


ReadinessCheck = Callable[[], Awaitable[Readiness]]


async def _always_ready() -> Readiness:
    return Readiness(True)


class TelemetryServer:
    """The role's one HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: ReadinessCheck = _always_ready,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # Port 0 asks the OS for a free port; report the one actually bound.
        if self._runner.addresses:
            self.port = self._runner.addresses[0][1]
        log.info("telemetry listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TelemetryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            state = await self._readiness()
        except Exception as exc:  # a failing check means "not ready", never a 500 loop
            log.warning("readiness check failed: %s", exc)
            state = Readiness(False, {"error": type(exc).__name__})
        return web.json_response(
            {"ready": state.ready, **state.detail}, status=200 if state.ready else 503
        )


def setup_tracing(service_name: str) -> TracerProvider | None:
    """Install a global tracer provider as the ``OTEL_*`` variables ask; ``None`` if disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    attributes = {"service.namespace": "herwa"}
    if not os.environ.get("OTEL_SERVICE_NAME"):  # the standard variable wins over our default
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter_choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint and exporter_choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing to OTLP endpoint", extra={"endpoint": endpoint})
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
