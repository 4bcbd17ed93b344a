"""The fan-out, unit-tested with respx standing in for the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import respx

from app.upstream import Upstream, UpstreamError, _classify

BASE = "http://upstream.test"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        yield Upstream(client, base_url=BASE, timeout=0.5, max_concurrency=50)


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
        upstream = Upstream(client, base_url=BASE, timeout=2, max_concurrency=3)
        fan_outs = [
            asyncio.create_task(upstream.get_all([f"{BASE}/{n}" for n in range(5)]))
            for _ in range(2)
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
    route = respx_mock.get(url)
    if isinstance(mock, Exception):
        route.mock(side_effect=mock)
    else:
        route.mock(return_value=mock)

    with pytest.raises(UpstreamError) as caught:
        await upstream.get_json(url)

    assert (caught.value.code, caught.value.status, caught.value.url) == (code, status, url)
    assert caught.value.detail


async def test_a_hung_upstream_times_out_within_the_limit(
    upstream: Upstream, respx_mock: respx.MockRouter
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={})

    respx_mock.get(f"{BASE}/hang").mock(side_effect=hang)
    respx_mock.get(f"{BASE}/ok").respond(json={"ok": True})

    async with asyncio.timeout(upstream.timeout + 1):
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
        upstream = Upstream(client, base_url=BASE, timeout=0.3, max_concurrency=1)
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

    assert _classify(wrapped)[0] == code
    assert detail in _classify(wrapped)[1]
