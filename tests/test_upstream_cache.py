"""The upstream client's HTTP cache, coalescing and stale-if-error, with respx standing in
for the upstream. Calls are counted at the mock; nothing here waits for a clock."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
import respx
from hishel import AsyncBaseStorage
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.data.http_cache import (
    REVALIDATE_WITHIN,
    SOFT_DELETE,
    MemoryStorage,
    date_answer,
    freshness,
    open_storage,
)
from app.data.posts import get_post
from app.data.upstream import KeptAnswers, Upstream, UpstreamError
from app.data.upstream_client import open_client
from tools.ports import free_port

BASE = "http://upstream.test"
URL = f"{BASE}/posts/7"
POST = {"userId": 1, "id": 7, "title": "seven", "body": "stub"}
MAX_BODY = 64 * 1024


@contextlib.asynccontextmanager
async def cached_upstream(
    storage: Any = None, *, stale_if_error: float = 0, coalesce: bool = True
) -> AsyncIterator[Upstream]:
    storage = storage or MemoryStorage(max_bytes=1024 * 1024, max_entry_bytes=MAX_BODY)
    client = open_client(
        max_concurrency=50,
        timeout=0.5,
        storage=storage,
        keep_unusable=stale_if_error > 0,
        transport=httpx.AsyncHTTPTransport(),
    )
    upstream = Upstream(
        client,
        base_url=BASE,
        timeout=0.5,
        max_concurrency=50,
        max_body_bytes=MAX_BODY,
        storage=storage,
        stale_if_error=stale_if_error,
        coalesce=coalesce,
    )
    try:
        yield upstream
    finally:
        await upstream.aclose()


def answer(headers: dict[str, str], status: int = 200, body: Any = POST) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"Date": http_date(), **headers})


def http_date(seconds_ago: float = 0) -> str:
    return email.utils.formatdate(time.time() - seconds_ago, usegmt=True)


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("upstream_cache_total", {"result": result}) or 0.0


# --- what is stored and reused (RFC 9111 as a shared cache) ---------------------------


async def test_a_fresh_answer_is_reused_without_a_call(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(URL).mock(return_value=answer({"Cache-Control": "max-age=60"}))
    hits = counted("hit")
    async with cached_upstream() as upstream:
        first = await get_post(upstream, 7)
        second = await get_post(upstream, 7)

    assert route.call_count == 1
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.body == first.body
    assert 58 <= second.fresh_for <= 60
    assert counted("hit") == hits + 1


@pytest.mark.parametrize(
    ("headers", "calls"),
    [
        ({"Cache-Control": "max-age=0, s-maxage=60"}, 1),  # a shared cache reads s-maxage
        ({"Cache-Control": "s-maxage=0, max-age=60"}, 2),
        ({"Expires": "in 60 s"}, 1),
        ({"Expires": "60 s ago"}, 2),
        ({"Cache-Control": "no-cache, max-age=60", "ETag": '"v1"'}, 2),
    ],
    ids=["s-maxage", "s-maxage-0", "expires-ahead", "expired", "no-cache"],
)
async def test_freshness_is_read_as_a_shared_cache_must(
    respx_mock: respx.MockRouter, headers: dict[str, str], calls: int
) -> None:
    when = {"in 60 s": http_date(seconds_ago=-60), "60 s ago": http_date(seconds_ago=60)}
    headers = {name: when.get(value, value) for name, value in headers.items()}
    route = respx_mock.get(URL).mock(return_value=answer(headers))
    async with cached_upstream() as upstream:
        await get_post(upstream, 7)
        await get_post(upstream, 7)

    assert route.call_count == calls
    if calls == 2 and "ETag" in headers:
        assert route.calls[1].request.headers["If-None-Match"] == '"v1"'


@pytest.mark.parametrize("control", ["no-store", "private, max-age=60", "max-age=60, no-store"])
async def test_what_a_shared_cache_may_not_store_is_asked_for_each_time(
    respx_mock: respx.MockRouter, control: str
) -> None:
    route = respx_mock.get(URL).mock(return_value=answer({"Cache-Control": control}))
    async with cached_upstream() as upstream:
        results = [await get_post(upstream, 7) for _ in range(3)]

    assert route.call_count == 3
    assert {result.fresh_for for result in results} == {0}


async def test_an_answer_without_freshness_is_revalidated_never_reused(
    respx_mock: respx.MockRouter,
) -> None:
    # hishel alone would reuse this for a tenth of its Last-Modified age (a heuristic)
    modified = http_date(seconds_ago=100 * 24 * 3600)
    route = respx_mock.get(URL).mock(return_value=answer({"Last-Modified": modified}))
    async with cached_upstream() as upstream:
        await get_post(upstream, 7)
        await get_post(upstream, 7)

    assert route.call_count == 2
    assert route.calls[1].request.headers["If-Modified-Since"] == modified


async def test_the_age_the_upstream_reports_counts(respx_mock: respx.MockRouter) -> None:
    # A CDN's copy: Date is now, but the answer is already 60 s old. hishel alone reckons
    # age from Date only and would call this fresh for a minute.
    headers = {"Cache-Control": "max-age=60", "Age": "60", "ETag": '"v1"'}
    route = respx_mock.get(URL).mock(return_value=answer(headers))
    async with cached_upstream() as upstream:
        first = await get_post(upstream, 7)
        await get_post(upstream, 7)

    assert first.fresh_for == 0
    assert route.call_count == 2
    assert route.calls[1].request.headers["If-None-Match"] == '"v1"'


def test_an_answer_without_a_date_is_dated_when_it_arrives() -> None:
    # Without a Date, hishel would reckon its age as 0 for ever: fresh for ever.
    headers = httpx.Headers({"Cache-Control": "max-age=60"})
    date_answer(headers, received=time.time() - 120, status=200)

    assert freshness(headers, now=time.time()).fresh_for == 0
    assert freshness(headers, now=time.time() - 90).fresh_for == 30


async def test_a_stale_answer_is_revalidated_and_a_304_counts_as_such(
    respx_mock: respx.MockRouter,
) -> None:
    stored = answer({"Cache-Control": "max-age=0", "ETag": '"v1"'})
    not_modified = httpx.Response(304, headers={"Cache-Control": "max-age=60", "ETag": '"v1"'})
    route = respx_mock.get(URL).mock(side_effect=[stored, not_modified])
    revalidated = counted("revalidated")
    async with cached_upstream() as upstream:
        await get_post(upstream, 7)
        again = await get_post(upstream, 7)
        third = await get_post(upstream, 7)

    assert route.call_count == 2
    assert route.calls[1].request.headers["If-None-Match"] == '"v1"'
    assert (again.cache, again.body.id) == ("revalidated", 7)
    assert 58 <= again.fresh_for <= 60  # the 304's freshness now applies
    assert third.cache == "hit"
    assert counted("revalidated") == revalidated + 1


async def test_answers_that_vary_are_kept_apart(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(URL).mock(
        side_effect=lambda request: answer(
            {"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
            body={**POST, "title": request.headers.get("Accept-Language", "")},
        )
    )
    async with cached_upstream() as upstream:
        client = upstream.client
        titles = [
            (await client.get(URL, headers={"Accept-Language": language})).json()["title"]
            for language in ("fr", "de", "fr", "de")
        ]

    assert titles == ["fr", "de", "fr", "de"]  # never the other language's answer
    assert route.call_count == 2  # one stored variant per language


async def test_a_body_over_the_limit_is_never_stored(respx_mock: respx.MockRouter) -> None:
    big = {**POST, "body": "x" * MAX_BODY}
    route = respx_mock.get(URL).mock(return_value=answer({"Cache-Control": "max-age=60"}, body=big))
    storage = MemoryStorage(max_bytes=1024 * 1024, max_entry_bytes=MAX_BODY)
    async with cached_upstream(storage) as upstream:
        for _ in range(2):
            with pytest.raises(UpstreamError) as failure:
                await get_post(upstream, 7)
            assert failure.value.code == "bad_response"

    assert route.call_count == 2
    assert storage.count == 0


# --- the memory storage's bound ---------------------------------------------------------


async def test_the_memory_cache_keeps_to_its_bound_least_recently_used_out_first(
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.get(url__startswith=f"{BASE}/posts/").mock(
        side_effect=lambda request: answer(
            {"Cache-Control": "max-age=60"},
            body={**POST, "id": int(request.url.path.rsplit("/", 1)[1])},
        )
    )
    storage = MemoryStorage(max_bytes=64 * 1024, max_entry_bytes=MAX_BODY)
    async with cached_upstream(storage) as upstream:
        await get_post(upstream, 1)
        for post_id in range(2, 400):
            await get_post(upstream, post_id)
            await get_post(upstream, 1)  # kept in use: never the least recent
        kept = storage.count
        first = await storage.get_entries(f"{BASE}/posts/1")
        second = await storage.get_entries(f"{BASE}/posts/2")

    assert storage.size <= 64 * 1024
    assert 10 < kept < 399
    assert (len(first), len(second)) == (1, 0)


# --- coalescing -------------------------------------------------------------------------


class Gate:
    """An upstream whose answers wait for `open`; counts the calls made."""

    def __init__(self) -> None:
        self.calls = 0
        self.open = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.started.set()
        await self.open.wait()
        return answer({"Cache-Control": "no-store"})


async def test_identical_gets_in_flight_share_one_call(respx_mock: respx.MockRouter) -> None:
    gate = Gate()
    respx_mock.get(URL).mock(side_effect=gate)
    joined = REGISTRY.get_sample_value("upstream_coalesced_total") or 0.0
    async with cached_upstream() as upstream:
        waiting = [asyncio.create_task(get_post(upstream, 7)) for _ in range(10)]
        await gate.started.wait()
        gate.open.set()
        results = await asyncio.gather(*waiting)

    assert gate.calls == 1
    assert {result.body.id for result in results} == {7}
    assert REGISTRY.get_sample_value("upstream_coalesced_total") == joined + 9


async def test_without_coalescing_each_get_is_its_own_call(
    respx_mock: respx.MockRouter,
) -> None:
    gate = Gate()
    respx_mock.get(URL).mock(side_effect=gate)
    async with cached_upstream(coalesce=False) as upstream:
        waiting = [asyncio.create_task(get_post(upstream, 7)) for _ in range(10)]
        await gate.started.wait()
        gate.open.set()
        await asyncio.gather(*waiting)

    assert gate.calls == 10


async def test_a_caller_that_gives_up_does_not_cancel_the_call_for_others(
    respx_mock: respx.MockRouter,
) -> None:
    gate = Gate()
    respx_mock.get(URL).mock(side_effect=gate)
    async with cached_upstream() as upstream:
        impatient = asyncio.create_task(get_post(upstream, 7))
        patient = asyncio.create_task(get_post(upstream, 7))
        await gate.started.wait()
        impatient.cancel()
        await asyncio.sleep(0)
        gate.open.set()
        result = await patient

    assert impatient.cancelled()
    assert result.body.id == 7
    assert gate.calls == 1


# --- stale-if-error (RFC 5861) ----------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(503), httpx.Response(500), httpx.ConnectError("refused")],
    ids=["503", "500", "unreachable"],
)
async def test_a_failed_upstream_is_covered_by_a_stored_answer_within_the_window(
    respx_mock: respx.MockRouter, failure: httpx.Response | Exception
) -> None:
    asked = []

    def upstream_answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if len(asked) == 1:
            return answer({"Cache-Control": "max-age=0", "ETag": '"v1"'})
        if isinstance(failure, Exception):
            raise failure
        return httpx.Response(failure.status_code)

    route = respx_mock.get(URL).mock(side_effect=upstream_answer)
    stale = counted("stale")
    async with cached_upstream(stale_if_error=60) as upstream:
        await get_post(upstream, 7)
        calls = route.call_count
        # twice: a failure must not push the stored answer out
        served = [await get_post(upstream, 7) for _ in range(2)]

    assert calls == 1
    assert route.call_count >= 3  # each failure was asked (tried again if unreachable)
    assert [(s.stale, s.cache, s.body.id, s.fresh_for) for s in served] == [
        (True, "stale", 7, 0)
    ] * 2
    assert counted("stale") == stale + 2


@pytest.mark.parametrize(
    ("failure", "stale_if_error", "control", "code"),
    [
        (httpx.Response(404), 60, "max-age=0", "not_found"),
        (httpx.Response(503), 0, "max-age=0", "upstream_error"),
        (httpx.Response(503), 60, "max-age=0, must-revalidate", "upstream_error"),
        (httpx.Response(403), 60, "max-age=0", "upstream_error"),
    ],
    ids=["404", "window-0", "must-revalidate", "4xx"],
)
async def test_stale_is_never_served_where_it_must_not_be(
    respx_mock: respx.MockRouter,
    failure: httpx.Response,
    stale_if_error: float,
    control: str,
    code: str,
) -> None:
    stored = answer({"Cache-Control": control, "ETag": '"v1"'})
    respx_mock.get(URL).mock(side_effect=[stored, failure])
    async with cached_upstream(stale_if_error=stale_if_error) as upstream:
        await get_post(upstream, 7)
        with pytest.raises(UpstreamError) as raised:
            await get_post(upstream, 7)

    assert raised.value.code == code


async def test_stale_past_the_window_is_not_served(respx_mock: respx.MockRouter) -> None:
    old = httpx.Response(
        200,
        json=POST,
        headers={"Date": http_date(seconds_ago=100), "Cache-Control": "max-age=10"},
    )
    respx_mock.get(URL).mock(side_effect=[old, httpx.Response(503)])
    async with cached_upstream(stale_if_error=60) as upstream:
        await get_post(upstream, 7)  # stale by 90 s as it arrives
        with pytest.raises(UpstreamError):
            await get_post(upstream, 7)


# --- storages -----------------------------------------------------------------------------


async def test_the_redis_cache_is_shared_by_processes(
    respx_mock: respx.MockRouter, redis_url: str
) -> None:
    route = respx_mock.get(URL).mock(return_value=answer({"Cache-Control": "max-age=60"}))
    results = []
    for _ in range(2):  # two clients, two storages: as two workers or instances
        storage = open_storage(redis_url, max_bytes=0, max_entry_bytes=MAX_BODY, stale_if_error=0)
        async with cached_upstream(storage) as upstream:
            results.append(await get_post(upstream, 7))

    assert route.call_count == 1
    assert [result.cache for result in results][1] == "hit"


async def test_with_the_cache_off_every_get_is_a_call(respx_mock: respx.MockRouter) -> None:
    assert open_storage("off", max_bytes=1, max_entry_bytes=1, stale_if_error=0) is None
    route = respx_mock.get(URL).mock(return_value=answer({"Cache-Control": "max-age=60"}))
    client = open_client(max_concurrency=5, timeout=1.0, transport=httpx.AsyncHTTPTransport())
    upstream = Upstream(
        client, base_url=BASE, timeout=0.5, max_concurrency=5, max_body_bytes=MAX_BODY
    )
    try:
        results = [await get_post(upstream, 7) for _ in range(2)]
    finally:
        await upstream.aclose()

    assert route.call_count == 2
    assert [result.cache for result in results] == [None, None]


def test_a_kept_answer_goes_when_its_freshness_and_stale_window_run_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    kept: KeptAnswers[str] = KeptAnswers(limit=2)
    kept.put("a", "A", fresh_for=10)
    kept.put("b", "B", fresh_for=10, stale_for=5)

    assert kept.get("a") == ("A", 1000.0, 1010.0)
    now[0] = 1010.0
    assert kept.get("a") is None
    assert kept.get("b") == ("B", 1000.0, 1010.0)  # stale now: the caller revalidates
    now[0] = 1015.0
    assert kept.get("b") is None
    for key in "abc":
        kept.put(key, key.upper(), fresh_for=10)
    assert [kept.get(key) is not None for key in "abc"] == [False, True, True]


async def test_a_redis_cache_that_does_not_answer_costs_misses_and_one_warning(
    respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx_mock.get(url__startswith=f"{BASE}/posts/").mock(
        side_effect=lambda request: answer(
            {"Cache-Control": "max-age=60"},
            body={**POST, "id": int(request.url.path.rsplit("/", 1)[1])},
        )
    )
    failures = REGISTRY.get_sample_value("upstream_cache_store_errors_total") or 0.0
    storage = open_storage(
        f"redis://127.0.0.1:{free_port()}/0", max_bytes=0, max_entry_bytes=1, stale_if_error=0
    )
    async with cached_upstream(storage) as upstream:
        results = [await get_post(upstream, post_id) for post_id in (7, 8, 9)]

    assert [result.body.id for result in results] == [7, 8, 9]
    assert route.call_count == 3
    assert (REGISTRY.get_sample_value("upstream_cache_store_errors_total") or 0) >= failures + 3
    store_lines = [r for r in caplog.records if r.name.startswith("hishel")]
    assert len(store_lines) <= 1
    assert all(r.levelname == "WARNING" and not r.exc_info for r in store_lines)


@contextlib.asynccontextmanager
async def frozen_store() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A Redis that accepts connections and never answers, as a SIGSTOPped one does; and
    the commands sent to it (the first bytes of each connection)."""
    offered: list[bytes] = []
    holding: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holding.append(writer)
        if sent := await reader.read(64):
            offered.append(sent)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/1", offered
    finally:
        for writer in holding:
            writer.close()
        server.close()


async def test_a_frozen_store_costs_a_healthy_upstream_nothing(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.get(url__startswith=f"{BASE}/posts/").mock(
        side_effect=lambda request: answer(
            {"Cache-Control": "max-age=60"},
            body={**POST, "id": int(request.url.path.rsplit("/", 1)[1])},
        )
    )
    async with frozen_store() as (url, offered):
        storage = open_storage(url, max_bytes=0, max_entry_bytes=MAX_BODY, stale_if_error=0)
        # the upstream's own timeout is 0.5 s: the store's waits must not eat it
        async with cached_upstream(storage) as upstream:
            results = [await get_post(upstream, post_id) for post_id in range(1, 11)]

    assert [result.body.id for result in results] == list(range(1, 11))
    assert route.call_count == 10
    assert len(offered) == 1  # tried once, then skipped: no command per call


@contextlib.asynccontextmanager
async def redis_cache(
    redis_url: str, db: int, *, stale_if_error: float
) -> AsyncIterator[tuple[Redis, AsyncBaseStorage]]:
    """A Redis database of its own on the private server, empty, for one test: a client
    to look at its keys, and the cache's storage on it."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    store = Redis.from_url(url)
    await store.flushdb()
    storage = open_storage(
        url, max_bytes=0, max_entry_bytes=MAX_BODY, stale_if_error=stale_if_error
    )
    assert storage is not None
    try:
        yield store, storage
    finally:
        await store.flushdb()
        await store.aclose()


async def lifetimes(store: Redis) -> dict[str, float]:
    """Each key of the cache and the seconds it has left in Redis."""
    return {
        key.decode(): await store.pttl(key) / 1000
        async for key in store.scan_iter("upstream-cache:*")
    }


def kinds(keys: Iterable[str]) -> set[str]:
    """What each key holds: `entry`, `stream`, `stream_done` or `idx`."""
    return {key.split(":")[1] for key in keys}


async def test_redis_entries_expire_once_they_can_no_longer_be_served(
    respx_mock: respx.MockRouter, redis_url: str
) -> None:
    respx_mock.get(url__startswith=f"{BASE}/posts/").mock(
        side_effect=[
            answer({"Cache-Control": "max-age=60"}),  # fresh 60 s, then 30 s stale-if-error
            answer({"Cache-Control": "max-age=60", "ETag": '"8"'}, body={**POST, "id": 8}),
        ]
    )
    async with (
        redis_cache(redis_url, db=3, stale_if_error=30) as (store, storage),
        cached_upstream(storage, stale_if_error=30) as upstream,
    ):
        await get_post(upstream, 7)
        first = await lifetimes(store)
        await get_post(upstream, 8)  # may also be revalidated for REVALIDATE_WITHIN
        both = await lifetimes(store)

    with_etag = {key: left for key, left in both.items() if key not in first}
    assert kinds(first) == kinds(with_etag) == {"entry", "stream", "stream_done", "idx"}
    assert all(60 + 30 < left <= 60 + 30 + SOFT_DELETE for left in first.values())
    assert all(
        60 + REVALIDATE_WITHIN < left <= 60 + REVALIDATE_WITHIN + SOFT_DELETE
        for left in with_etag.values()
    )


async def test_a_revalidated_redis_entry_lives_as_long_as_its_new_freshness(
    respx_mock: respx.MockRouter, redis_url: str
) -> None:
    stale = answer({"Cache-Control": "max-age=10", "ETag": '"7"', "Date": http_date(100)})
    renewed = httpx.Response(304, headers={"Date": http_date(), "Cache-Control": "max-age=7200"})
    route = respx_mock.get(URL).mock(side_effect=[stale, renewed])
    async with (
        redis_cache(redis_url, db=4, stale_if_error=0) as (store, storage),
        cached_upstream(storage) as upstream,
    ):
        await get_post(upstream, 7)
        before = await lifetimes(store)
        revalidated = await get_post(upstream, 7)
        after = await lifetimes(store)

    assert route.call_count == 2
    assert revalidated.cache == "revalidated"
    assert kinds(before) == kinds(after) == {"entry", "stream", "stream_done", "idx"}
    assert max(before.values()) <= REVALIDATE_WITHIN + SOFT_DELETE
    assert all(left > 7200 + REVALIDATE_WITHIN - 60 for left in after.values())
