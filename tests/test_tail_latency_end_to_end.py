"""Hedging and the breaker through hypercorn, against the real upstream stub on loopback
made slow or silent: every upstream call is counted by the stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.processes import Service, metric, running_service
from tools.upstream_stub import running_stub

pytestmark = pytest.mark.e2e

IDS = ",".join(str(n) for n in range(1, 11))
WINDOW = 1.0  # seconds the breaker stays open before a probe


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with running_stub() as base:
        yield base


@pytest.fixture
async def upstream(stub: str) -> AsyncIterator[httpx.AsyncClient]:
    """The stub's own controls: counters zeroed, no tail, not silent."""
    async with httpx.AsyncClient(base_url=stub) as client:
        await client.get("/_reset")
        yield client
        await client.get("/_reset")


async def calls_at(upstream: httpx.AsyncClient) -> int:
    calls: int = (await upstream.get("/_stats")).json()["calls"]
    return calls


@pytest.fixture(scope="module")
def hedging(
    stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(
        tmp_path_factory.mktemp("hedging"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        UPSTREAM_CACHE="off",
        UPSTREAM_HEDGE_AFTER="100",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def breaking(
    stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(
        tmp_path_factory.mktemp("breaking"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        UPSTREAM_CACHE="off",
        UPSTREAM_TIMEOUT="0.5",
        UPSTREAM_BREAKER=f"3/{WINDOW:g}s",
    ) as service:
        yield service


async def test_the_slow_calls_of_a_fan_out_are_hedged_and_the_losers_let_go(
    hedging: Service, upstream: httpx.AsyncClient
) -> None:
    await upstream.get("/_tail/5/30")  # calls 5 and 10 would take 30 s
    won = await metric(hedging, "upstream_hedges_total", outcome="won")

    async with httpx.AsyncClient(base_url=hedging.base, timeout=10) as client:
        response = await client.get(f"/api/v1/posts?ids={IDS}")

    assert [item["ok"] for item in response.json()["items"]] == [True] * 10
    assert await calls_at(upstream) == 12  # ten, and one hedge for each slow call
    assert await metric(hedging, "upstream_hedges_total", outcome="won") == won + 2
    for _ in range(100):  # the two losers' connections are closed: the stub lets go
        if (await upstream.get("/_stats")).json()["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await upstream.get("/_stats")).json()["in_flight"] == 0


async def test_a_silent_upstream_opens_the_breaker_and_only_a_probe_reaches_it(
    breaking: Service, upstream: httpx.AsyncClient
) -> None:
    await upstream.get("/_silent")
    async with httpx.AsyncClient(base_url=breaking.base, timeout=10) as client:
        timed_out = await asyncio.gather(*(client.get(f"/api/v1/posts/{n}") for n in (1, 2, 3)))
        refused = [await client.get("/api/v1/posts/1") for _ in range(20)]
        calls_while_open = await calls_at(upstream)
        await asyncio.sleep(WINDOW)
        # five different posts, so that no request joins another's call
        after_window = await asyncio.gather(
            *(client.get(f"/api/v1/posts/{n}") for n in range(1, 6))
        )
        calls_with_probe = await calls_at(upstream)
        await upstream.get("/_reset")  # the upstream is back
        await asyncio.sleep(WINDOW)
        recovered = await client.get("/api/v1/posts/1")

    assert [answer.status_code for answer in timed_out] == [504] * 3
    assert {answer.status_code for answer in refused} == {502}
    assert "breaker is open" in refused[0].json()["detail"]
    assert calls_while_open == 3
    assert sorted(answer.status_code for answer in after_window) == [502] * 4 + [504]
    assert calls_with_probe == 4  # one probe for the window, however many asked
    assert recovered.status_code == 200
    assert await metric(breaking, "upstream_breaker_state", host=upstream_host(upstream)) == 0


def upstream_host(upstream: httpx.AsyncClient) -> str:
    return upstream.base_url.netloc.decode()
