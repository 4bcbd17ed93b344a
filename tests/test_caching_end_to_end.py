"""Caching, coalescing and stale-if-error through hypercorn, against the real upstream stub
on loopback: every upstream call is counted by the stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.processes import Service, metric, running_service
from tools.upstream_stub import running_stub

pytestmark = pytest.mark.e2e

IDS = ",".join(str(n) for n in range(1, 11))


@pytest.fixture(scope="module")
def slow_stub() -> Iterator[str]:
    # each call takes 0.3 s, so that requests sent together overlap at the upstream
    with running_stub(delay=0.3) as base:
        yield base


@pytest.fixture(scope="module")
def fresh_for_60(
    slow_stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service as shipped, against an upstream whose posts stay fresh for 60 s."""
    with running_service(
        tmp_path_factory.mktemp("cached-60"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=f"{slow_stub}/cached/60",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def always_stale(
    slow_stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """Against an upstream whose posts must be revalidated each time; stale-if-error 300 s."""
    with running_service(
        tmp_path_factory.mktemp("cached-0"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=f"{slow_stub}/cached/0",
        UPSTREAM_STALE_IF_ERROR="300",
        # each failure here reaches the upstream; the breaker has tests of its own
        UPSTREAM_BREAKER="off",
    ) as service:
        yield service


@pytest.fixture
async def upstream(slow_stub: str) -> AsyncIterator[httpx.AsyncClient]:
    """The stub's own controls: counters zeroed, no failure."""
    async with httpx.AsyncClient(base_url=slow_stub) as client:
        await client.get("/_reset")
        yield client
        await client.get("/_reset")


async def stats(upstream: httpx.AsyncClient) -> dict[str, int]:
    answer: dict[str, int] = (await upstream.get("/_stats")).json()
    return answer


async def test_ten_requests_for_one_post_make_one_call_and_the_next_makes_none(
    fresh_for_60: Service, upstream: httpx.AsyncClient
) -> None:
    coalesced = await metric(fresh_for_60, "upstream_coalesced_total")
    async with httpx.AsyncClient(base_url=fresh_for_60.base, timeout=10) as client:
        answers = await asyncio.gather(*(client.get("/api/v1/posts/7") for _ in range(10)))
        after_together = await stats(upstream)
        later = await client.get("/api/v1/posts/7")
        after_later = await stats(upstream)

    assert [answer.status_code for answer in answers] == [200] * 10
    assert after_together["calls"] == 1
    assert await metric(fresh_for_60, "upstream_coalesced_total") == coalesced + 9
    assert later.status_code == 200
    assert after_later["calls"] == 1  # fresh in the cache: no call at all
    assert later.headers["Cache-Status"].endswith("hit; ttl=" + later.headers["Cache-Control"][8:])


async def test_our_304_goes_out_through_hypercorn_without_a_body(
    fresh_for_60: Service, upstream: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=fresh_for_60.base, timeout=10) as client:
        first = await client.get("/api/v1/posts/8")
        again = await client.get(
            "/api/v1/posts/8", headers={"If-None-Match": first.headers["ETag"]}
        )
        # the connection is still good for the next request
        after = await client.get("/api/v1/posts/9")

    assert (first.status_code, again.status_code, after.status_code) == (200, 304, 200)
    assert again.content == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert (await stats(upstream))["calls"] == 2  # 8 once, 9 once


async def test_an_expired_post_costs_one_conditional_call_answered_304(
    always_stale: Service, upstream: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=always_stale.base, timeout=10) as client:
        first = await client.get("/api/v1/posts/21")
        second = await client.get("/api/v1/posts/21")

    counted = await stats(upstream)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == first.json()
    assert (counted["calls"], counted["conditional"], counted["not_modified"]) == (2, 1, 1)
    assert second.headers["Cache-Control"] == "no-cache"
    assert "fwd=stale; fwd-status=304" in second.headers["Cache-Status"]


async def test_a_failing_upstream_is_covered_by_stale_posts_marked_as_such(
    always_stale: Service, upstream: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=always_stale.base, timeout=10) as client:
        before = await client.get(f"/api/v1/posts?ids={IDS}")
        await upstream.get("/_fail/503")
        during = await client.get(f"/api/v1/posts?ids={IDS},99")
        single = await client.get("/api/v1/posts/3")
        await upstream.get("/_reset")
        recovered = await client.get(f"/api/v1/posts?ids={IDS}")

    assert all(item["ok"] and not item["stale"] for item in before.json()["items"])
    assert during.status_code == 200
    items = during.json()["items"]
    assert [(item["ok"], item.get("stale")) for item in items[:10]] == [(True, True)] * 10
    assert items[10]["ok"] is False  # never seen: nothing to stand in for it
    assert items[10]["error"]["code"] == "upstream_error"
    assert single.status_code == 200
    assert 'detail="stale-if-error"' in single.headers["Cache-Status"]
    assert int(single.headers["Age"]) >= 0
    assert single.headers["Cache-Control"] == "no-cache"
    assert all(item["ok"] and not item["stale"] for item in recovered.json()["items"])
