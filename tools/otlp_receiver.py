"""A real OTLP/HTTP trace receiver on loopback: what a collector would be, for the tests
and the benchmarks.

It takes `POST /v1/traces` as the OpenTelemetry exporter sends it (protobuf, optionally
gzip), decodes every span, and keeps them for the caller to look at.

    async with OtlpReceiver() as receiver:   # receiver.endpoint: http://127.0.0.1:PORT
        ...
        spans = await receiver.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tools.ports import free_port


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # 1 internal, 2 server, 3 client
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # 0 unset, 1 ok, 2 error


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        events=[
                            (event.name, _attributes(event.attributes)) for event in span.events
                        ],
                        resource=resource,
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpReceiver:
    """The receiver, serving on a free loopback port while the `async with` lasts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests += 1
        self.spans.extend(decode(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, ready: Callable[[list[ReceivedSpan]], bool], within: float = 15.0
    ) -> list[ReceivedSpan]:
        """The spans received, once `ready(spans)` holds (AssertionError after `within` s)."""
        deadline = time.monotonic() + within
        while not ready(self.spans):
            if time.monotonic() > deadline:
                names = sorted({span.name for span in self.spans})
                raise AssertionError(f"not received in {within:g} s; spans so far: {names}")
            await asyncio.sleep(0.05)
        return self.spans


def main() -> None:
    """Serve on --port until killed (the benchmarks' collector); counts spans received."""
    import argparse

    parser = argparse.ArgumentParser(description="OTLP/HTTP trace receiver on loopback")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    counted = {"spans": 0, "requests": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        counted["requests"] += 1
        counted["spans"] += len(decode(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counted)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/_stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
