"""The fan-out, unit-tested with respx standing in for the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
import respx

from app.data.posts import get_post
from app.data.upstream import Upstream, UpstreamError
from app.data.upstream_calls import classify
from app.data.upstream_client import open_client
from app.models import UPSTREAM_STATUS
from tests.support.upstream_mock import mock_answer

BASE = "http://upstream.test"
MAX_BODY = 64 * 1024


def upstream_on(client: httpx.AsyncClient, **options: Any) -> Upstream:
    return Upstream(
        client, base_url=BASE, timeout=0.5, max_concurrency=50, max_body_bytes=MAX_BODY, **options
    )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        yield upstream_on(client)


class InFlight:
    """Counts calls in flight; each call waits until `release` is set.

    `reached` is set once `expected` calls have started.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.now = 0
        self.most = 0
        self.started = 0
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.started += 1
        self.most = max(self.most, self.now)
        if self.started >= self.expected:
            self.reached.set()
        try:
            await self.release.wait()
        finally:
            self.now -= 1
        return httpx.Response(200, json={"path": request.url.path})


async def test_answers_come_back_in_the_order_asked(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    async def slow_first(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"n": 1})

    respx_mock.get(f"{BASE}/1").mock(side_effect=slow_first)
    respx_mock.get(f"{BASE}/2").respond(json={"n": 2})
    respx_mock.get(f"{BASE}/3").respond(json=[3, "three"])

    results = await upstream.get_all([f"{BASE}/1", f"{BASE}/2", f"{BASE}/3"])

    assert results == [{"n": 1}, {"n": 2}, [3, "three"]]


async def test_every_call_starts_before_any_finishes(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    urls = [f"{BASE}/{n}" for n in range(10)]
    in_flight = InFlight(expected=len(urls))
    respx_mock.get(url__startswith=BASE).mock(side_effect=in_flight)

    fan_out = asyncio.create_task(upstream.get_all(urls))
    # Sequential calls would never get past the first one: it waits for the release.
    async with asyncio.timeout(2):
        await in_flight.reached.wait()
    in_flight.release.set()
    results = await fan_out

    assert in_flight.most == len(urls)
    assert results == [{"path": f"/{n}"} for n in range(10)]


async def test_calls_in_flight_never_exceed_the_bound_even_across_fan_outs(
    respx_mock: respx.MockRouter,
) -> None:
    in_flight = InFlight(expected=3)
    respx_mock.get(url__startswith=BASE).mock(side_effect=in_flight)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        upstream = Upstream(
            client, base_url=BASE, timeout=2, max_concurrency=3, max_body_bytes=MAX_BODY
        )
        fan_outs = [  # distinct URLs: identical ones would share calls (coalescing)
            asyncio.create_task(upstream.get_all([f"{BASE}/{n}" for n in range(5 * k, 5 * k + 5)]))
            for k in range(2)
        ]
        async with asyncio.timeout(2):
            await in_flight.reached.wait()
        await asyncio.sleep(0.05)  # room for a fourth call to start, were the bound broken
        assert in_flight.now == 3
        in_flight.release.set()
        results = await asyncio.gather(*fan_outs)

    assert in_flight.most == 3
    assert in_flight.started == 10
    assert all(not isinstance(item, UpstreamError) for batch in results for item in batch)


@pytest.mark.parametrize(
    ("mock", "code", "status"),
    [
        (httpx.Response(404), "not_found", 404),
        (httpx.Response(500), "upstream_error", 502),
        (httpx.Response(503, text="busy"), "upstream_error", 502),
        (httpx.Response(200, text="<html>oops</html>"), "bad_response", 502),
        (httpx.Response(200, content=b"\xff\xfe{"), "bad_response", 502),
        (httpx.ConnectError("refused"), "unreachable", 502),
        (httpx.RemoteProtocolError("closed"), "unreachable", 502),
        (httpx.ReadTimeout("slow"), "timeout", 504),
    ],
)
async def test_each_failure_maps_to_its_code(
    upstream: Upstream,
    respx_mock: respx.MockRouter,
    mock: httpx.Response | Exception,
    code: str,
    status: int,
) -> None:
    url = f"{BASE}/posts/1"
    mock_answer(respx_mock.get(url), mock)

    with pytest.raises(UpstreamError) as caught:
        await upstream.get_json(url)

    assert (caught.value.code, UPSTREAM_STATUS[caught.value.code], caught.value.url) == (
        code,
        status,
        url,
    )
    assert caught.value.detail


async def test_a_hung_upstream_times_out_within_the_limit(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={})

    respx_mock.get(f"{BASE}/hang").mock(side_effect=hang)
    respx_mock.get(f"{BASE}/ok").respond(json={"ok": True})

    async with asyncio.timeout(upstream.calls.timeout + 1):
        results = await upstream.get_all([f"{BASE}/hang", f"{BASE}/ok"])

    assert isinstance(results[0], UpstreamError)
    assert results[0].code == "timeout"
    assert results[1] == {"ok": True}


async def test_waiting_for_a_free_slot_counts_against_the_timeout(
    respx_mock: respx.MockRouter,
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={})

    respx_mock.get(url__startswith=BASE).mock(side_effect=hang)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        upstream = Upstream(
            client, base_url=BASE, timeout=0.3, max_concurrency=1, max_body_bytes=MAX_BODY
        )
        async with asyncio.timeout(2):
            results = await upstream.get_all([f"{BASE}/a", f"{BASE}/b"])

    assert [result.code for result in results if isinstance(result, UpstreamError)] == [
        "timeout",
        "timeout",
    ]


@pytest.mark.parametrize(
    ("cause", "code", "detail"),
    [
        (aiohttp.ServerDisconnectedError(), "unreachable", "closed the connection"),
        (
            aiohttp.ClientOSError(104, "Connection reset by peer"),
            "unreachable",
            "closed the connection",
        ),
        (aiohttp.ServerTimeoutError("read"), "timeout", "in time"),
    ],
)
def test_aiohttp_errors_are_judged_by_what_happened(
    cause: Exception, code: str, detail: str
) -> None:
    # httpx-aiohttp wraps all of these in httpx.ConnectTimeout.
    wrapped = httpx.ConnectTimeout(str(cause))
    wrapped.__cause__ = cause

    assert classify(wrapped)[0] == code
    assert detail in classify(wrapped)[1]


class Endless(httpx.AsyncByteStream):
    """A body that never ends; counts the chunks anyone asked it for."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 1
            yield self.chunk


async def test_a_body_declared_too_large_is_refused_unread(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    body = Endless(b"x" * 4096)
    respx_mock.get(f"{BASE}/posts/1").mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(10**9)}, stream=body)
    )

    with pytest.raises(UpstreamError) as raised:
        await get_post(upstream, 1)

    assert raised.value.code == "bad_response"
    assert f"larger than {MAX_BODY} bytes" in raised.value.detail
    assert body.sent == 0


async def test_a_body_is_abandoned_as_soon_as_it_streams_past_the_limit(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    body = Endless(b"x" * 4096)
    respx_mock.get(f"{BASE}/posts/1").mock(return_value=httpx.Response(200, stream=body))

    with pytest.raises(UpstreamError) as raised:
        await get_post(upstream, 1)

    assert raised.value.code == "bad_response"
    # one chunk past the limit, and not one more
    assert body.sent == MAX_BODY // 4096 + 1


async def test_a_body_at_the_limit_is_read(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    post = b'{"userId": 1, "id": 1, "title": "t", "body": "'
    post += b"x" * (MAX_BODY - len(post) - 2) + b'"}'
    assert len(post) == MAX_BODY
    respx_mock.get(f"{BASE}/posts/1").mock(return_value=httpx.Response(200, content=post))

    assert len((await get_post(upstream, 1)).body.body) == MAX_BODY - 48


async def test_no_compressed_answer_is_asked_for_or_taken(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(f"{BASE}/posts/1").mock(
        return_value=httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f")
    )
    client = open_client(max_concurrency=50, timeout=1.0, transport=httpx.AsyncHTTPTransport())
    async with client:
        upstream = upstream_on(client)
        with pytest.raises(UpstreamError) as raised:
            await get_post(upstream, 1)

    assert route.calls.last.request.headers["Accept-Encoding"] == "identity"
    assert raised.value.code == "bad_response"
    assert "gzip" in raised.value.detail


async def test_cookies_an_upstream_sets_are_never_sent_back(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(url__regex=rf"{BASE}/posts/\d+").mock(
        return_value=httpx.Response(
            200,
            json={"userId": 1, "id": 1, "title": "t", "body": "b"},
            headers={"Set-Cookie": "session=someone-else; Path=/"},
        )
    )
    client = open_client(max_concurrency=50, timeout=1.0, transport=httpx.AsyncHTTPTransport())
    async with client:
        upstream = upstream_on(client)
        for post_id in range(1, 5):
            await get_post(upstream, post_id)

    assert route.call_count == 4
    assert [call.request.headers.get("Cookie") for call in route.calls] == [None] * 4
    assert not client.cookies
