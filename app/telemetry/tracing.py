"""Tracing with OpenTelemetry: off unless the standard OTEL_* variables name a collector.

Off, nothing imports the SDK (nor the API): `active` is None, and each place that would
trace checks that once. On (`start_tracing`, from `create_app`):

- the ASGI instrumentation opens one server span per request, named here by method and
  route template (its own default is the raw path: one name per post id); `/readyz` and
  `/metrics` are not traced;
- `app.data.upstream_calls` opens a client span per upstream attempt (first call,
  retry, hedge, probe, background revalidation) and sends `traceparent` on;
  `app.data.upstream` adds events for answers that needed no call (kept, coalesced,
  stale);
- `app.data.database.execute` opens a span per statement, with the statement as
  written (parameters bound separately, so never a value);
- each JSON log line of a request carries `trace_id` and `span_id` (app.telemetry.logs).

Spans leave in batches from the SDK's own thread (never the event loop), from a bounded
queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default): with the collector away, the spans that
do not fit are dropped and counted (`tracing_spans_dropped_total`), and its failures are
logged once a minute, not once a batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.telemetry.metrics import TRACING_SPANS_DROPPED

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "quart-async-demo"
UNTRACED_PATHS = "/readyz,/metrics"
WARN_EVERY = 60.0  # seconds between two warnings that spans cannot be exported
EXPORT_ON_STOP = 3.0  # seconds a stopping process waits for its last spans to leave


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces: an OTLP endpoint, and neither
    OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class Tracing:
    """The process's tracer, and what the service's layers ask of it."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("app")
        self._trace = trace
        self._inject = propagate.inject
        self._client = trace.SpanKind.CLIENT

    def name_server_span(self, method: str, route: str) -> None:
        """Name the request's span by its route template, as metrics label it."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)

    @contextmanager
    def client_span(self, url: str, role: str) -> Iterator[tuple[Span, dict[str, str]]]:
        """A span for one upstream GET, and the headers that carry it onward. An
        attempt cancelled (a hedge that lost, a call its hedge overtook) is marked so,
        not as an error."""
        parts = urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": url,
            "server.address": parts.hostname or "",
            "upstream.attempt": role,
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        with self.tracer.start_as_current_span(
            "GET",
            kind=self._client,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers: dict[str, str] = {}
            self._inject(headers)
            try:
                yield span, headers
            except asyncio.CancelledError:
                span.set_attribute("upstream.cancelled", True)
                raise
            except Exception as error:
                span.record_exception(error)
                span.set_status(self._trace.StatusCode.ERROR, type(error).__name__)
                raise

    def answered(self, span: Span, status: int, cache: str | None) -> None:
        span.set_attribute("http.response.status_code", status)
        if cache is not None:
            span.set_attribute("upstream.cache", cache)
        if status >= 400:
            span.set_status(self._trace.StatusCode.ERROR)

    @contextmanager
    def statement_span(self, statement: str) -> Iterator[Span]:
        """A span for one SQL statement (OpenTelemetry's database conventions)."""
        operation = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
        attributes = {
            "db.system": "mariadb",
            "db.system.name": "mariadb",
            "db.query.text": statement,
            "db.operation.name": operation,
        }
        with self.tracer.start_as_current_span(
            operation, kind=self._client, attributes=attributes
        ) as span:
            yield span

    def event(self, name: str, **attributes: Any) -> None:
        """An event on the current span (an answer that needed no call of its own)."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    def current_ids(self) -> tuple[str, str] | None:
        """The current span's trace and span ids, as hex, for a log line."""
        context = self._trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    def wrap(self, asgi_app: Any) -> Any:
        """The ASGI app inside a server span per request."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(
            asgi_app,
            excluded_urls=UNTRACED_PATHS,
            # named by route once routed (name_server_span); until then, by method
            # alone: the raw path would make one span name per post id
            default_span_details=_method_only,
            tracer_provider=self.provider,
            exclude_spans=["receive", "send"],
        )

    def shutdown(self) -> None:
        """Send what is queued, waiting at most EXPORT_ON_STOP seconds (blocking: call
        it from a thread). The SDK's own shutdown may wait 30 s for a collector that
        is away; it goes on in a daemon thread, which the process does not wait for."""
        stopping = threading.Thread(target=self.provider.shutdown, daemon=True)
        stopping.start()
        stopping.join(EXPORT_ON_STOP)


active: Tracing | None = None


def start_tracing(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing for this process, if the environment asks for it; once per process."""
    global active
    if active is not None or not tracing_configured(environ):
        return active
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (without
    # either, the service is SERVICE_NAME); the provider reads OTEL_TRACES_SAMPLER
    # (parent-based, always on, by default); the processor and exporter their
    # OTEL_BSP_* and OTEL_EXPORTER_OTLP_* variables.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _quieten_export_failures()
    active = Tracing(provider)
    return active


def _method_only(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return str(scope.get("method") or "HTTP"), {}


class ExportFailures(logging.Filter):
    """The SDK logs each span it drops and each failed export: with the collector away
    under load, a line per span. Drops are counted; one warning a minute goes through."""

    def __init__(self) -> None:
        super().__init__()
        self._passed_at = -WARN_EVERY

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if "Queue full" in str(record.msg):
            TRACING_SPANS_DROPPED.inc()
        now = time.monotonic()
        if now - self._passed_at < WARN_EVERY:
            return False
        self._passed_at = now
        record.msg = f"{record.msg} (tracing: export failures are logged once a minute)"
        record.exc_info = record.exc_text = None
        return True


def _quieten_export_failures() -> None:
    export_filter = ExportFailures()
    for name in (
        "opentelemetry.sdk._shared_internal",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http",
    ):
        logging.getLogger(name).addFilter(export_filter)
