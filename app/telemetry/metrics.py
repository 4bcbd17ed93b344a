"""Prometheus metrics: requests, upstream calls, the database pool, event-loop lag.

With several hypercorn workers each is its own process with its own counters. When
PROMETHEUS_MULTIPROC_DIR is set (`python -m app` sets it for WORKERS > 1),
prometheus-client writes every process's values there and /metrics adds them up, so any
worker answers for all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("http_requests_total", "Requests answered.", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time from the request's start to its answer.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_CALLS = Counter("upstream_calls_total", "Upstream calls, by outcome.", ["outcome"])
UPSTREAM_SECONDS = Histogram(
    "upstream_call_duration_seconds",
    "Time of one upstream call, retries and the wait for a slot included.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_CACHE = Counter(
    "upstream_cache_total",
    "Upstream GETs by what the HTTP cache did: hit, miss, revalidated (a 304), stale "
    "(stale-if-error), stale_while_revalidate (served while asked again in the background).",
    ["result"],
)
UPSTREAM_CACHE_STORE_ERRORS = Counter(
    "upstream_cache_store_errors_total",
    "Failed operations on the upstream cache's Redis store (each a miss or an answer not kept).",
)
UPSTREAM_COALESCED = Counter(
    "upstream_coalesced_total", "Upstream GETs that joined an identical call in flight."
)
UPSTREAM_RETRIES = Counter(
    "upstream_retries_total", "Upstream calls tried again after a connection error."
)
UPSTREAM_HEDGES = Counter(
    "upstream_hedges_total",
    "Hedges of slow upstream calls: won (answered first), lost (cancelled), skipped "
    "(due, but the budget, the breaker or the concurrency bound said no).",
    ["outcome"],
)
UPSTREAM_BREAKER_STATE = Gauge(
    "upstream_breaker_state",
    "Each upstream host's breaker: 0 closed, 1 half-open, 2 open.",
    ["host"],
    multiprocess_mode="livemax",
)
UPSTREAM_BREAKER_TRANSITIONS = Counter(
    "upstream_breaker_transitions_total",
    "Times a host's breaker moved, by the state it moved to.",
    ["host", "to"],
)
TRACING_SPANS_DROPPED = Counter(
    "tracing_spans_dropped_total",
    "Spans lost: no room in the export queue, or a batch the collector never received.",
    ["reason"],
)
DB_POOL_SIZE = Gauge(
    "db_pool_connections", "Connections the pool holds.", multiprocess_mode="livesum"
)
DB_POOL_FREE = Gauge(
    "db_pool_free_connections", "Connections idle in the pool.", multiprocess_mode="livesum"
)
RATE_LIMIT_STORE_ERRORS = Counter(
    "rate_limit_store_errors_total",
    "Writes admitted uncounted because the rate-limit store did not answer.",
)
LOOP_LAG = Gauge(
    "event_loop_lag_seconds",
    "How late the last event-loop probe woke up.",
    multiprocess_mode="livemax",
)
LOOP_BLOCKED = Counter(
    "event_loop_blocked_total", "Times the event loop was blocked past the threshold."
)

# Routes that did not match (404s) share one label, so scanners cannot grow the series.
UNMATCHED = "<unmatched>"


def render() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
