"""Tracing with OpenTelemetry, through hypercorn, against a real OTLP/HTTP receiver on
loopback (tools/otlp_receiver.py decodes the protobuf the exporter sends) and the upstream
stub, which records the `traceparent` each call carries."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.otlp import running_receiver
from tests.support.processes import Service, clean_environ, metric, running_service
from tests.support.settings import E2E_TOKEN
from tools import REPO
from tools.otlp_receiver import OtlpReceiver, ReceivedSpan
from tools.ports import free_port
from tools.upstream_stub import running_stub

pytestmark = pytest.mark.e2e

SERVER, CLIENT = 2, 3  # OTLP span kinds
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # ms between batches: spans arrive soon


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with running_stub() as base:
        yield base


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(
    stub: str, receiver: OtlpReceiver, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(
        tmp_path_factory.mktemp("traced"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        UPSTREAM_CACHE="off",
        UPSTREAM_HEDGE_AFTER="100",
        API_TOKEN=E2E_TOKEN,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        **FAST_EXPORT,
    ) as service:
        yield service


@pytest.fixture
async def upstream(stub: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stub) as client:
        await client.get("/_reset")
        yield client
        await client.get("/_reset")


def new_trace() -> tuple[str, str, str]:
    """A trace id, a parent span id, and the `traceparent` that carries them (sampled)."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


async def spans_of(
    receiver: OtlpReceiver, trace_id: str, *, at_least: int, kind: int | None = None
) -> list[ReceivedSpan]:
    def found(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id and kind in (None, s.kind)]

    await receiver.wait_for(lambda spans: len(found(spans)) >= at_least)
    return found(receiver.spans)


async def test_a_fan_out_continues_the_callers_trace_to_the_upstream(
    traced: Service, receiver: OtlpReceiver, upstream: httpx.AsyncClient, stub: str
) -> None:
    trace_id, parent, traceparent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        response = await client.get("/api/v1/posts?ids=1,2", headers={"traceparent": traceparent})

    assert response.status_code == 200
    spans = await spans_of(receiver, trace_id, at_least=3)
    (server,) = [span for span in spans if span.kind == SERVER]
    calls = [span for span in spans if span.kind == CLIENT and "url.full" in span.attributes]
    assert server.name == "GET /api/v1/posts"
    assert server.attributes["http.route"] == "/api/v1/posts"
    assert server.parent_span_id == parent
    assert server.resource["service.name"] == "quart-async-demo"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/api/v1/posts"
    assert server.attributes["http.response.status_code"] == 200
    assert sorted(span.attributes["url.full"] for span in calls) == [
        f"{stub}/posts/1",
        f"{stub}/posts/2",
    ]
    assert {span.parent_span_id for span in calls} == {server.span_id}
    assert {span.attributes["upstream.attempt"] for span in calls} == {"call"}
    assert {span.attributes["http.response.status_code"] for span in calls} == {200}
    # what reached the stub: the trace, each call under its own span
    sent = (await upstream.get("/_stats")).json()["traceparents"]
    assert sorted(value.split("-")[2] for value in sent) == sorted(s.span_id for s in calls)
    assert {value.split("-")[1] for value in sent} == {trace_id}


async def test_a_trace_the_caller_did_not_sample_is_not_recorded_but_goes_on(
    traced: Service, receiver: OtlpReceiver, upstream: httpx.AsyncClient
) -> None:
    trace_id, parent, _ = new_trace()
    marker, _, marker_parent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        response = await client.get(
            "/api/v1/posts?ids=1,2", headers={"traceparent": f"00-{trace_id}-{parent}-00"}
        )
        await client.get("/healthz", headers={"traceparent": marker_parent})

    assert response.status_code == 200
    await spans_of(receiver, marker, at_least=1)  # exported after the unsampled request
    assert not [span for span in receiver.spans if span.trace_id == trace_id]
    sent = (await upstream.get("/_stats")).json()["traceparents"]
    assert len(sent) == 2
    assert {(value.split("-")[1], value.split("-")[3]) for value in sent} == {(trace_id, "00")}


async def test_a_single_post_span_is_named_by_its_route_template(
    traced: Service, receiver: OtlpReceiver, upstream: httpx.AsyncClient
) -> None:
    trace_id, _, traceparent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        await client.get("/api/v1/posts/7", headers={"traceparent": traceparent})

    (server,) = await spans_of(receiver, trace_id, at_least=1, kind=SERVER)
    assert server.name == "GET /api/v1/posts/<int:post_id>"


async def test_a_hedge_is_a_span_of_its_own(
    traced: Service, receiver: OtlpReceiver, upstream: httpx.AsyncClient
) -> None:
    await upstream.get("/_tail/2/30")  # the second call would take 30 s
    trace_id, _, traceparent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base, timeout=10) as client:
        response = await client.get("/api/v1/posts?ids=1,2", headers={"traceparent": traceparent})

    assert [item["ok"] for item in response.json()["items"]] == [True, True]
    calls = await spans_of(receiver, trace_id, at_least=3, kind=CLIENT)
    attempts = sorted(span.attributes["upstream.attempt"] for span in calls)
    assert attempts == ["call", "call", "hedge"]


async def test_statements_are_traced_and_their_values_never(
    traced: Service, receiver: OtlpReceiver
) -> None:
    trace_id, _, traceparent = new_trace()
    name, email = f"Zed {secrets.token_hex(6)}", f"{secrets.token_hex(6)}@example.com"
    async with httpx.AsyncClient(base_url=traced.base) as client:
        response = await client.post(
            "/api/v1/users",
            json={"name": name, "email": email},
            headers={"traceparent": traceparent, "Authorization": f"Bearer {E2E_TOKEN}"},
        )

    assert response.status_code == 201
    spans = await spans_of(receiver, trace_id, at_least=3)
    statements = [span for span in spans if "db.query.text" in span.attributes]
    assert [span.name for span in statements] == ["INSERT", "SELECT"]
    assert statements[0].attributes["db.system"] == "mariadb"
    assert "%(name)s" in statements[0].attributes["db.query.text"]
    every_value = json.dumps([(s.name, s.attributes, s.events) for s in spans])
    assert name not in every_value
    assert email not in every_value
    assert E2E_TOKEN not in every_value


async def test_readiness_and_metrics_are_not_traced(
    traced: Service, receiver: OtlpReceiver
) -> None:
    untraced, _, untraced_parent = new_trace()
    marker, _, marker_parent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        for path in ("/readyz", "/metrics"):
            await client.get(path, headers={"traceparent": untraced_parent})
        await client.get("/healthz", headers={"traceparent": marker_parent})

    await spans_of(receiver, marker, at_least=1)  # exported after the two others
    assert not [span for span in receiver.spans if span.trace_id == untraced]


async def test_invented_methods_share_one_span_name(
    traced: Service, receiver: OtlpReceiver
) -> None:
    trace_id, _, traceparent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        for method in ("FROB", "XYZZY", "PURGE1"):
            await client.request(method, "/api/v1/posts", headers={"traceparent": traceparent})

    servers = await spans_of(receiver, trace_id, at_least=3, kind=SERVER)
    assert {span.name for span in servers} == {"_OTHER"}  # no route: Quart answered 405
    assert {span.attributes["http.request.method"] for span in servers} == {"_OTHER"}
    assert {span.attributes["http.request.method_original"] for span in servers} == {
        "FROB",
        "XYZZY",
        "PURGE1",
    }
    assert {span.attributes["http.response.status_code"] for span in servers} == {405}


async def test_each_log_line_of_a_request_names_its_trace_and_span(
    traced: Service, receiver: OtlpReceiver
) -> None:
    trace_id, _, traceparent = new_trace()
    async with httpx.AsyncClient(base_url=traced.base) as client:
        response = await client.get("/healthz", headers={"traceparent": traceparent})

    (server,) = await spans_of(receiver, trace_id, at_least=1, kind=SERVER)
    request_id = response.headers["X-Request-ID"]
    lines = [json.loads(line) for line in traced.log_lines() if request_id in line]
    assert lines
    assert {(line["trace_id"], line["span_id"]) for line in lines} == {(trace_id, server.span_id)}


async def test_a_caller_not_among_the_trusted_proxies_starts_a_trace_of_its_own(
    stub: str, receiver: OtlpReceiver, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    trace_id, _, traceparent = new_trace()
    with running_service(
        tmp_path_factory.mktemp("untrusting"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        TRUSTED_PROXIES="10.0.0.0/8",  # not loopback, where this test calls from
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="untrusting",
        **FAST_EXPORT,
    ) as service:
        async with httpx.AsyncClient(base_url=service.base) as client:
            await client.get("/api/v1/posts/1", headers={"traceparent": traceparent})

        def ours(span: ReceivedSpan) -> bool:
            untrusting = span.resource.get("service.name") == "untrusting"
            return untrusting and span.name == "GET /api/v1/posts/<int:post_id>"

        spans = await receiver.wait_for(lambda spans: any(ours(span) for span in spans))

    (server,) = [span for span in spans if ours(span)]
    assert server.trace_id != trace_id
    assert server.parent_span_id == ""


async def test_a_collector_that_is_away_costs_requests_nothing_and_every_span_is_counted(
    stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with running_service(
        tmp_path_factory.mktemp("collector-away"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        UPSTREAM_CACHE="off",
        UPSTREAM_COALESCE="false",
        UPSTREAM_HEDGE_AFTER="off",
        OTEL_EXPORTER_OTLP_ENDPOINT=nowhere,
        OTEL_EXPORTER_OTLP_TIMEOUT="1",  # seconds: a batch is given up on soon
        OTEL_BSP_MAX_QUEUE_SIZE="64",  # so that spans overflow it within the test
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="64",
        **FAST_EXPORT,
    ) as service:
        async with httpx.AsyncClient(base_url=service.base) as client:
            answers = await asyncio.gather(
                *(client.get("/api/v1/posts?ids=1,2,3") for _ in range(100))
            )
        made = 100 * 4  # a server span and three calls each (and the start's /healthz)

        async def lost() -> tuple[float, float]:
            return (
                await metric(service, "tracing_spans_dropped_total", reason="queue_full"),
                await metric(service, "tracing_spans_dropped_total", reason="not_delivered"),
            )

        for _ in range(100):  # the last batches wait out the exporter's retries
            queue_full, not_delivered = await lost()
            if queue_full + not_delivered >= made:
                break
            await asyncio.sleep(0.2)
        lines = service.log_lines()

    assert [answer.status_code for answer in answers] == [200] * 100
    assert queue_full > 0
    assert not_delivered > 0
    assert made <= queue_full + not_delivered < made + 10
    warnings = [line for line in lines if '"level":"WARNING"' in line and "opentelemetry" in line]
    assert len(warnings) <= 2  # once a minute, not once a span


def opentelemetry_modules_after(*statements: str) -> set[str]:
    """The OpenTelemetry modules a fresh interpreter holds after `statements`."""
    probe = "\n".join(
        (
            "import sys",
            *statements,
            "print(' '.join(m for m in sys.modules if m.startswith('opentelemetry')))",
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=clean_environ(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_with_tracing_off_no_tracing_code_is_imported() -> None:
    imported = opentelemetry_modules_after(
        "from app import create_app",
        "from tests.support.settings import make_settings",
        "create_app(make_settings('mysql://u:p@127.0.0.1/db'))",
    )
    # redis-py 8 loads OpenTelemetry's metrics SDK whenever it is installed, for metrics
    # of its own that stay off unless asked for: nothing beyond that is loaded
    by_redis = opentelemetry_modules_after("import redis.asyncio")

    assert imported - by_redis == set()
    assert not {name for name in imported if name.startswith("opentelemetry.sdk.trace")}
