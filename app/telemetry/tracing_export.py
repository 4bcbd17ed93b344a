"""Where finished spans go: in batches to the collector, from the SDK's own thread, and
what is counted when they cannot get there. Imported only when tracing is on (it loads
the SDK).

A span is lost two ways, each counted in `tracing_spans_dropped_total`:

- `reason="queue_full"`: the batch queue (OTEL_BSP_MAX_QUEUE_SIZE) had no room, the
  collector being slow or away. The SDK says so only in a log line per span, behind a
  filter of its own that lets one of a run of identical lines through, so the counting
  filter goes first.
- `reason="not_delivered"`: a batch the exporter gave up on (the collector refused it,
  or was still away after its retries, OTEL_EXPORTER_OTLP_TIMEOUT). The SDK's batch
  processor discards the result; the exporter here counts it.

The SDK and exporter log every failed export and every dropped span: with the collector
away under load, lines by the thousand. One warning a minute goes through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from app.telemetry.logs import OnceAMinute
from app.telemetry.metrics import TRACING_SPANS_DROPPED

SDK_LOGGERS = (
    "opentelemetry.sdk._shared_internal",  # the batch processor's "Queue full"
    "opentelemetry.sdk.trace.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http",
)


class CountingExporter(SpanExporter):
    """OTLP/HTTP (configured by the OTEL_EXPORTER_OTLP_* variables), counting the spans
    of each batch it could not deliver."""

    def __init__(self) -> None:
        self.otlp = OTLPSpanExporter()
        for reason in ("queue_full", "not_delivered"):
            TRACING_SPANS_DROPPED.labels(reason)  # both series from the start, at 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.otlp.export(spans)
        except Exception:
            TRACING_SPANS_DROPPED.labels("not_delivered").inc(len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            TRACING_SPANS_DROPPED.labels("not_delivered").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.otlp.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.otlp.force_flush(timeout_millis)


class ExportFailures(OnceAMinute):
    """Counts the spans the batch queue drops; lets one warning a minute through."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING, " (tracing: export failures are logged once a minute)")

    def seen(self, record: logging.LogRecord) -> None:
        if "Queue full" in str(record.msg):
            TRACING_SPANS_DROPPED.labels("queue_full").inc()


def quieten_export_failures() -> None:
    export_filter = ExportFailures()
    for name in SDK_LOGGERS:
        # first, ahead of the SDK's own filter of repeated lines, which would hide
        # every drop after the first from the count
        logging.getLogger(name).filters.insert(0, export_filter)
