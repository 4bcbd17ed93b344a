"""Tracing with OpenTelemetry: off unless the standard OTEL_* variables name a collector.

Off, nothing imports the SDK (nor the API): `active` is None, and each place that would
trace checks that once. On (`start_tracing`, from `create_app`):

- `ServerSpans` opens one server span per request around the ASGI app, named by method
  and route template once routed (never the raw path: one name per post id); `/readyz`
  and `/metrics` are not traced;
- `app.data.upstream_calls` opens a client span per upstream attempt (first call,
  retry, hedge, probe, background revalidation) and sends `traceparent` on;
  `app.data.upstream` adds events for answers that needed no call (kept, coalesced,
  stale);
- `app.data.database.execute` opens a span per statement, with the statement as
  written (parameters bound separately, so never a value);
- each JSON log line of a request carries `trace_id` and `span_id` (app.telemetry.logs).

Spans leave in batches from the SDK's own thread (never the event loop), from a bounded
queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default): with the collector away, spans that do
not fit, or that it never receives, are dropped and counted (app.telemetry.tracing_export).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework as ASGIApp
    from hypercorn.typing import ASGIReceiveCallable as Receive
    from hypercorn.typing import ASGISendCallable as Send
    from hypercorn.typing import ASGISendEvent as Message
    from hypercorn.typing import Scope
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "quart-async-demo"
UNTRACED_PATHS = frozenset({"/readyz", "/metrics"})
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
        self._error = trace.StatusCode.ERROR
        # the headers the configured propagators read (OTEL_PROPAGATORS; by default
        # traceparent, tracestate and baggage), lower case as ASGI gives them
        self.trace_headers = frozenset(
            name.lower().encode("latin-1") for name in propagate.get_global_textmap().fields
        )

    def name_server_span(self, method: str, route: str) -> None:
        """Name the request's span by its route template, as metrics label it."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.update_name(f"{known_method(method)} {route}")
            span.set_attribute("http.route", route)

    @contextmanager
    def client_span(self, url: str, role: str) -> Iterator[tuple[Span, dict[str, str]]]:
        """A span for one upstream GET, and the headers that carry it onward. An
        attempt cancelled (a hedge that lost, a call its hedge overtook) is marked so,
        not as an error. The span is not made current: nothing runs inside it that
        would be its child, and attaching a context costs each call."""
        if self._unsampled():
            headers: dict[str, str] = {}
            self._inject(headers)  # the trace goes on, marked as not sampled
            yield self._trace.INVALID_SPAN, headers
            return
        parts = urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": url,
            "server.address": parts.hostname or "",
            "upstream.attempt": role,
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        span = self.tracer.start_span("GET", kind=self._client, attributes=attributes)
        headers = {}
        self._inject(headers, self._trace.set_span_in_context(span))
        try:
            yield span, headers
        except asyncio.CancelledError:
            span.set_attribute("upstream.cancelled", True)
            raise
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            span.end()

    def answered(self, span: Span, status: int, cache: str | None) -> None:
        if cache is None:
            span.set_attribute("http.response.status_code", status)
        else:
            span.set_attributes({"http.response.status_code": status, "upstream.cache": cache})
        if status >= 400:
            span.set_status(self._error)

    @contextmanager
    def statement_span(self, statement: str) -> Iterator[Span]:
        """A span for one SQL statement (OpenTelemetry's database conventions)."""
        if self._unsampled():
            yield self._trace.INVALID_SPAN
            return
        operation = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
        attributes = {
            "db.system": "mariadb",
            "db.system.name": "mariadb",
            "db.query.text": statement,
            "db.operation.name": operation,
        }
        span = self.tracer.start_span(operation, kind=self._client, attributes=attributes)
        try:
            yield span
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            span.end()

    def _unsampled(self) -> bool:
        """Whether this runs within a trace that is not sampled, whose spans would not be
        recorded either. The default samplers (parent-based, or a ratio of the trace id)
        decide once per trace, so asking the sampler again for each upstream call or
        statement would cost each one a span's setting-up for nothing."""
        context = self._trace.get_current_span().get_span_context()
        return context.is_valid and not context.trace_flags.sampled

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

    def wrap(self, asgi_app: ASGIApp) -> ASGIApp:
        """The ASGI app inside a server span per request."""
        return ServerSpans(asgi_app, self)

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
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from app.telemetry.tracing_export import CountingExporter, quieten_export_failures

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (without
    # either, the service is SERVICE_NAME); the provider reads OTEL_TRACES_SAMPLER
    # (parent-based, always on, by default); the processor and exporter their
    # OTEL_BSP_* and OTEL_EXPORTER_OTLP_* variables.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(CountingExporter()))
    trace.set_tracer_provider(provider)
    quieten_export_failures()
    active = Tracing(provider)
    return active


# HTTP's methods (RFC 9110, and PATCH): any other token a client sends is "_OTHER" in
# span names and attributes, as OpenTelemetry's HTTP conventions say, so that a client
# inventing methods cannot make one span name each.
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


def known_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


def _failed(span: Span, error: Exception) -> None:
    from opentelemetry.trace import StatusCode

    span.record_exception(error)
    span.set_status(StatusCode.ERROR, type(error).__name__)


class ServerSpans:
    """A server span around each HTTP request the ASGI app serves, continuing the
    caller's trace from its `traceparent`.

    Ours rather than opentelemetry-instrumentation-asgi's middleware: that one cost
    115 us a request against 26 us for this (a plain ASGI app on Python 3.11), for
    attributes and metrics we do not need, and names spans by raw path. The span is
    current while the app runs, so the request's spans are its children and its log
    lines carry its ids; `name_server_span` names it by route once Quart has routed.
    """

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        from opentelemetry import context, propagate, trace

        self.app = app
        self.tracer = tracing.tracer
        self._attach, self._detach = context.attach, context.detach
        self._extract = propagate.extract
        self._in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._error = trace.StatusCode.ERROR
        self._carried = tracing.trace_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self._carried
        }
        parent = self._extract(carrier) if carrier else None
        method = known_method(scope["method"])
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope["scheme"],
            "url.path": scope["path"],
            "network.protocol.version": scope["http_version"],
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = scope["method"]
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        span = self.tracer.start_span(
            method, context=parent, kind=self._server, attributes=attributes
        )
        token = self._attach(self._in_context(span, parent))
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            if status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(self._error)
            span.end()
            self._detach(token)
