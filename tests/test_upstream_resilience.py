"""Faster than the slowest call: hedges, retries within a budget, a breaker per host and
stale-while-revalidate, unit-tested with respx standing in for the upstream.

Each test counts what reaches the upstream; none measures time beyond "it did not wait
for the slow call".
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from app.data.http_cache import MemoryStorage
from app.data.posts import get_post, get_posts
from app.data.resilience import Breaker, BreakerState, ExtraCallBudget, RecentLatency
from app.data.upstream import Upstream, UpstreamError
from app.data.upstream_client import open_client

BASE = "http://upstream.test"
URL = f"{BASE}/posts/7"
POST = {"userId": 1, "id": 7, "title": "seven", "body": "stub"}
SLOW = 30.0  # seconds a slow answer would take: far past any test's patience


@contextlib.asynccontextmanager
async def upstream_with(*, cached: bool = False, **options: Any) -> AsyncIterator[Upstream]:
    storage = MemoryStorage(max_bytes=1024 * 1024, max_entry_bytes=65536) if cached else None
    max_concurrency = options.pop("max_concurrency", 50)
    client = open_client(
        max_concurrency=max_concurrency,
        timeout=2.0,
        storage=storage,
        keep_unusable=options.get("stale_if_error", 0) + options.get("stale_while_revalidate", 0)
        > 0,
        transport=httpx.AsyncHTTPTransport(),
    )
    upstream = Upstream(
        client,
        base_url=BASE,
        timeout=2.0,
        max_concurrency=max_concurrency,
        max_body_bytes=65536,
        storage=storage,
        **options,
    )
    try:
        yield upstream
    finally:
        await upstream.aclose()


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Answers:
    """The upstream: the n-th call (from 1) in `slow` never answers in time; every call
    is counted, and so is each one the client gave up on (cancelled)."""

    def __init__(self, slow: frozenset[int] = frozenset()) -> None:
        self.slow = slow
        self.calls = 0
        self.cancelled = 0
        self.in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.in_flight += 1
        try:
            if self.calls in self.slow:
                await asyncio.sleep(SLOW)
            return httpx.Response(200, json=POST)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


# --- hedged requests ------------------------------------------------------------------


async def test_a_slow_call_is_hedged_and_the_loser_leaves_nothing_behind(
    respx_mock: respx.MockRouter,
) -> None:
    answers = Answers(slow=frozenset({1}))
    respx_mock.get(URL).mock(side_effect=answers)
    won = counted("upstream_hedges_total", outcome="won")
    tasks_before = len(asyncio.all_tasks())

    async with upstream_with(hedge_after=0.05) as upstream:
        async with asyncio.timeout(SLOW / 2):  # the slow call's answer was never awaited
            fetched = await get_post(upstream, 7)
        await asyncio.sleep(0)  # let cancelled work unwind

        assert fetched.body.id == 7
        assert answers.calls == 2
        assert answers.cancelled == 1
        assert answers.in_flight == 0
        assert len(asyncio.all_tasks()) == tasks_before
        assert counted("upstream_hedges_total", outcome="won") == won + 1


async def test_a_hedged_call_leaves_one_cache_entry(respx_mock: respx.MockRouter) -> None:
    calls = 0

    async def first_slow(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(SLOW)
        return httpx.Response(200, json=POST, headers={"Cache-Control": "max-age=60"})

    respx_mock.get(URL).mock(side_effect=first_slow)
    async with upstream_with(cached=True, hedge_after=0.05) as upstream:
        await get_post(upstream, 7)
        assert isinstance(upstream.storage, MemoryStorage)
        stored = upstream.storage.count
        again = await get_post(upstream, 7)

    assert calls == 2
    assert stored == 1  # the winner's; the cancelled loser stored nothing
    assert again.cache == "hit"


async def test_a_call_that_answers_in_time_is_not_hedged(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(URL).mock(side_effect=Answers())

    async with upstream_with(hedge_after=5.0) as upstream:
        for _ in range(5):
            await get_post(upstream, 7)

    assert route.call_count == 5


async def test_a_hedge_that_loses_is_cancelled_and_counted(respx_mock: respx.MockRouter) -> None:
    # the first call answers after the hedge went out, but before the hedge answers
    gate = asyncio.Event()
    calls = 0
    cancelled = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls, cancelled
        calls += 1
        try:
            if calls == 1:
                await gate.wait()
            else:
                gate.set()
                await asyncio.sleep(SLOW)
            return httpx.Response(200, json=POST)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    respx_mock.get(URL).mock(side_effect=answer)
    lost = counted("upstream_hedges_total", outcome="lost")

    async with upstream_with(hedge_after=0.05) as upstream:
        async with asyncio.timeout(SLOW / 2):
            await get_post(upstream, 7)

    assert (calls, cancelled) == (2, 1)
    assert counted("upstream_hedges_total", outcome="lost") == lost + 1


async def test_no_hedge_while_concurrency_is_saturated(respx_mock: respx.MockRouter) -> None:
    gate = asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200, json=POST)

    route = respx_mock.get(URL).mock(side_effect=held)
    skipped = counted("upstream_hedges_total", outcome="skipped")

    async with upstream_with(hedge_after=0.02, max_concurrency=1) as upstream:
        call = asyncio.create_task(get_post(upstream, 7))
        await asyncio.sleep(0.1)  # five times the hedging delay
        gate.set()
        await call

    assert route.call_count == 1
    assert counted("upstream_hedges_total", outcome="skipped") == skipped + 1


async def test_hedges_and_retries_keep_to_the_budget(respx_mock: respx.MockRouter) -> None:
    # every first call is slow: without a budget each of 40 calls would be hedged
    calls = 0

    async def slow_first(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if request.url.path.endswith("/slow") or calls % 2:
            await asyncio.sleep(0.2)
        return httpx.Response(200, json=POST)

    respx_mock.get(url__startswith=BASE).mock(side_effect=slow_first)
    async with upstream_with(hedge_after=0.01) as upstream:
        budget = upstream.calls.budget
        results = await get_posts(upstream, list(range(1, 41)))

    assert all(not isinstance(result, UpstreamError) for result in results.values())
    extras = calls - 40
    assert extras == budget.extras
    assert extras <= max(budget.floor, budget.ratio * 40)


def test_the_budget_grows_with_the_calls_and_forgets_after_its_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    budget = ExtraCallBudget(ratio=0.05, period=60, floor=10)
    for _ in range(1000):
        budget.called()

    assert sum(budget.try_spend() for _ in range(100)) == 50

    now[0] += 61  # a minute later, nothing made then counts
    assert sum(budget.try_spend() for _ in range(100)) == 10


def test_auto_hedging_waits_for_the_hosts_own_95th_percentile_when_it_has_a_tail() -> None:
    latency = RecentLatency(keep=100, every=10, least=50)
    for _ in range(49):
        latency.record(0.050)
    assert latency.hedge_after is None  # too few to tell: no hedging yet
    for n in range(51):
        latency.record(2.0 if n % 10 == 0 else 0.050 + n / 10_000)  # 6 in 100 are slow

    assert latency.p95 == 2.0
    assert latency.hedge_after is None  # a hedge sent at a slow p95 could not win
    for n in range(100):
        latency.record(2.0 if n % 50 == 0 else 0.050 + n / 10_000)  # 1 in 50

    assert latency.hedge_after == pytest.approx(0.0597)
    for n in range(100):
        latency.record(0.050 + n / 10_000)  # nothing slow: a hedge could not win

    assert latency.p95 == pytest.approx(0.0595)
    assert latency.hedge_after is None


# --- retries --------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_a_failed_connection_is_retried_as_often_as_configured(
    respx_mock: respx.MockRouter, retries: int
) -> None:
    route = respx_mock.get(URL).mock(side_effect=httpx.ConnectError("refused"))

    async with upstream_with(retries=retries) as upstream:
        with pytest.raises(UpstreamError) as raised:
            await get_post(upstream, 7)

    assert raised.value.code == "unreachable"
    assert route.call_count == 1 + retries


# --- the breaker ----------------------------------------------------------------------


async def test_the_breaker_opens_after_its_failures_and_calls_stop(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.get(URL).respond(503)
    opened = counted("upstream_breaker_transitions_total", host="upstream.test", to="open")

    async with upstream_with(breaker=(5, 60.0)) as upstream:
        for _ in range(5):
            with pytest.raises(UpstreamError) as raised:
                await get_post(upstream, 7)
            assert raised.value.code == "upstream_error"
        for _ in range(20):
            with pytest.raises(UpstreamError) as raised:
                await get_post(upstream, 7)

    assert route.call_count == 5
    assert raised.value.code == "unreachable"
    assert "breaker is open" in raised.value.detail
    assert counted("upstream_breaker_state", host="upstream.test") == BreakerState.OPEN
    assert counted("upstream_breaker_transitions_total", host="upstream.test", to="open") == (
        opened + 1
    )
    assert counted("upstream_calls_total", outcome="breaker_open") >= 20


async def test_a_failure_shared_by_coalesced_requests_counts_for_each(
    respx_mock: respx.MockRouter,
) -> None:
    # a silent host asked for one URL by many requests: one call, many requests failed
    calls = 0

    async def slow_failure(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return httpx.Response(503)

    respx_mock.get(URL).mock(side_effect=slow_failure)
    async with upstream_with(breaker=(5, 60.0)) as upstream:
        together = await asyncio.gather(
            *(get_post(upstream, 7) for _ in range(5)), return_exceptions=True
        )
        with pytest.raises(UpstreamError) as raised:
            await get_post(upstream, 7)

    assert all(isinstance(result, UpstreamError) for result in together)
    assert calls == 1
    assert "breaker is open" in raised.value.detail


async def test_answers_that_are_not_failures_never_open_the_breaker(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.get(URL).respond(404)

    async with upstream_with(breaker=(2, 60.0)) as upstream:
        for _ in range(6):
            with pytest.raises(UpstreamError):
                await get_post(upstream, 7)

    assert route.call_count == 6


async def test_after_a_window_one_probe_goes_and_its_answer_closes_the_breaker(
    respx_mock: respx.MockRouter,
) -> None:
    gate = asyncio.Event()
    probed = asyncio.Event()
    failing = True
    calls = 0

    async def upstream_answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if failing:
            return httpx.Response(503)
        probed.set()
        await gate.wait()
        return httpx.Response(200, json=POST)

    respx_mock.get(URL).mock(side_effect=upstream_answer)
    async with upstream_with(breaker=(2, 0.2), coalesce=False) as upstream:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await get_post(upstream, 7)
        await asyncio.sleep(0.25)  # the breaker's window
        failing = False
        waiting = [asyncio.create_task(get_post(upstream, 7)) for _ in range(10)]
        await probed.wait()
        gate.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)

        assert calls == 3  # two failures, then one probe
        assert sum(not isinstance(result, UpstreamError) for result in results) == 1
        assert counted("upstream_breaker_state", host="upstream.test") == BreakerState.CLOSED
        await get_post(upstream, 7)  # closed: calls go again
        assert calls == 4


def test_a_failed_probe_keeps_the_breaker_open_another_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    breaker = Breaker(failures=3, window=10)
    for _ in range(3):
        breaker.failed(probe=False)

    assert breaker.admit() == "refuse"
    now[0] += 10
    assert [breaker.admit() for _ in range(3)] == ["probe", "refuse", "refuse"]
    breaker.failed(probe=True)
    now[0] += 9.9
    assert breaker.admit() == "refuse"
    now[0] += 0.1
    assert breaker.admit() == "probe"


def test_failures_spread_wider_than_the_window_do_not_open_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    breaker = Breaker(failures=3, window=10)
    for _ in range(6):
        breaker.failed(probe=False)
        now[0] += 6

    assert breaker.state is BreakerState.CLOSED


async def test_an_open_breaker_serves_stale_answers_without_a_call(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=POST, headers={"Cache-Control": "max-age=0"}),
            *[httpx.Response(503)] * 5,
        ]
    )
    async with upstream_with(cached=True, stale_if_error=300, breaker=(2, 60.0)) as upstream:
        await get_post(upstream, 7)
        results = [await get_post(upstream, 7) for _ in range(6)]

    assert route.call_count == 3  # the first answer, then two failures open the breaker
    assert all(result.stale and result.body.id == 7 for result in results)


# --- stale-while-revalidate -----------------------------------------------------------


def dated(seconds_ago: float) -> str:
    return email.utils.formatdate(time.time() - seconds_ago, usegmt=True)


@pytest.mark.parametrize(
    ("control", "setting"),
    [("max-age=1, stale-while-revalidate=60", 0), ("max-age=1", 60)],
    ids=["the upstream's directive", "UPSTREAM_STALE_WHILE_REVALIDATE"],
)
async def test_an_expired_answer_is_served_at_once_while_one_call_revalidates_it(
    respx_mock: respx.MockRouter, control: str, setting: float
) -> None:
    gate = asyncio.Event()
    calls = 0

    async def upstream_answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:  # already past its max-age when it arrives
            return httpx.Response(
                200, json=POST, headers={"Cache-Control": control, "Date": dated(5)}
            )
        await gate.wait()
        renewed = {**POST, "title": "renewed"}
        return httpx.Response(200, json=renewed, headers={"Cache-Control": "max-age=60"})

    respx_mock.get(URL).mock(side_effect=upstream_answer)
    async with upstream_with(
        cached=True, stale_while_revalidate=setting, hedge_after=0.01
    ) as upstream:
        await get_post(upstream, 7)
        served = [await get_post(upstream, 7) for _ in range(10)]  # the gate is still shut

        await asyncio.sleep(0.05)  # five times the hedging delay

        # one background call however many were served meanwhile, and never hedged
        assert calls == 2
        assert all(fetched.stale and fetched.body.title == "seven" for fetched in served)
        assert {fetched.cache for fetched in served} == {"stale_while_revalidate"}
        gate.set()
        titles = [(await get_post(upstream, 7)).body.title]
        for _ in range(100):  # until the background call has landed
            if titles[-1] == "renewed":
                break
            await asyncio.sleep(0.01)
            titles.append((await get_post(upstream, 7)).body.title)

    assert titles[-1] == "renewed"
    assert calls == 2


async def test_an_answer_that_must_be_revalidated_is_never_served_stale(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.get(URL).mock(
        return_value=httpx.Response(
            200,
            json=POST,
            headers={"Cache-Control": "max-age=1, must-revalidate", "Date": dated(5)},
        )
    )
    async with upstream_with(cached=True, stale_while_revalidate=60) as upstream:
        results = [await get_post(upstream, 7) for _ in range(3)]

    assert route.call_count == 3
    assert not any(result.stale for result in results)
