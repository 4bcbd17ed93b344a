"""Answers from the upstream API: what is kept is answered at once, identical GETs in
flight share one call, and a stored answer stands in for a failed call or while it is
revalidated in the background.

The blog post's `make_api_calls()` opened a new aiohttp session per request and let any
single failure become a 500. Here one client lives for the life of the process
(`app.lifespan`), and each failure becomes an `UpstreamError` with a code the routes
map to a status. Reading down from a route:

- `app.data.posts`: which URL, and whether the answer is a post;
- here: `get_json` answers from `KeptAnswers` (parsed, while fresh or within a
  stale-while-revalidate window), else joins the call in flight for the URL
  (UPSTREAM_COALESCE), else makes one; a failure may be covered by a stored answer
  (UPSTREAM_STALE_IF_ERROR);
- `app.data.upstream_calls`: the call itself, timed, bounded, hedged, retried, and
  refused while the host's breaker is open;
- `app.data.upstream_client` and `app.data.http_cache`: the HTTP client, and the RFC
  9111 cache under it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Generic, NamedTuple, TypeVar

import httpx
from hishel import AsyncBaseStorage
from pydantic_core import from_json

from app.data.http_cache import MemoryStorage, freshness, stale_entry
from app.data.upstream_calls import (
    BodyTooLarge,
    CacheResult,
    FailureCode,
    HedgeAfter,
    UpstreamCalls,
    UpstreamError,
    cache_result,
    read_chunks,
)
from app.telemetry import tracing
from app.telemetry.metrics import (
    UPSTREAM_CACHE,
    UPSTREAM_CALLS,
    UPSTREAM_COALESCED,
    UPSTREAM_SECONDS,
)

__all__ = ["FailureCode", "Fetched", "Upstream", "UpstreamError", "settled"]

T = TypeVar("T")

KEPT_ANSWERS = 1024  # parsed answers kept (about 1 MB); see KeptAnswers


class Fetched(NamedTuple, Generic[T]):
    """An upstream answer's parsed body and what the HTTP cache knew of it.

    A NamedTuple: made several times per upstream call, ten calls per fan-out, where a
    frozen dataclass's field-by-field set-up shows in the instruction count.
    """

    body: T
    fresh_for: int = 0  # seconds it may still be reused without asking the upstream
    age: int = 0  # seconds since the upstream made it
    stale: bool = False  # served past its freshness (the upstream failed, or is re-asked)
    cache: CacheResult | None = None  # None when UPSTREAM_CACHE is off
    # seconds past its freshness it may be served while revalidated in the background
    stale_while_revalidate: int = 0


async def settled(call: Awaitable[T]) -> T | UpstreamError:
    """The call's result, or its UpstreamError as a value: one failure never fails a batch."""
    try:
        return await call
    except UpstreamError as error:
        return error


class Upstream:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        timeout: float,
        max_concurrency: int,
        max_body_bytes: int,
        storage: AsyncBaseStorage | None = None,
        stale_if_error: float = 0,
        stale_while_revalidate: float = 0,
        coalesce: bool = True,
        retries: int = 1,
        hedge_after: HedgeAfter = None,
        breaker: tuple[int, float] | None = None,
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.max_body_bytes = max_body_bytes
        self.storage = storage
        self.stale_if_error = stale_if_error
        self.stale_while_revalidate = int(stale_while_revalidate)
        self.coalesce = coalesce
        self.calls = UpstreamCalls(
            client,
            timeout=timeout,
            max_concurrency=max_concurrency,
            max_body_bytes=max_body_bytes,
            cache_keyed=storage is not None,
            retries=retries,
            hedge_after=hedge_after,
            breaker=breaker,
        )
        self._in_flight: dict[str, asyncio.Future[Fetched[Any]]] = {}
        self._joined: dict[str, int] = {}  # requests waiting on a call they did not start
        self._kept: KeptAnswers[Fetched[Any]] = KeptAnswers(KEPT_ANSWERS)
        # served from _kept, an answer is still in use: the memory storage keeps it longer
        self._touch = storage.touch if isinstance(storage, MemoryStorage) else _ignore

    @property
    def keeps_answers(self) -> bool:
        return self.storage is not None

    async def get_json(self, url: str) -> Fetched[Any]:
        """The parsed JSON body of a 2xx answer from `url`, else raise UpstreamError.

        With UPSTREAM_COALESCE, a GET for a URL already being fetched waits for that
        call instead of making its own.
        """
        if self.storage is not None and (kept := self.kept(url)) is not None:
            return kept
        if not self.coalesce:
            return await self._fetch(url)
        call = self._in_flight.get(url)
        if call is None:
            call = self._start(url, background=False)
        else:
            UPSTREAM_COALESCED.inc()
            self._joined[url] = self._joined.get(url, 0) + 1
            if tracing.active is not None:
                tracing.active.event("upstream.coalesced", **{"url.full": url})
        # shielded: a caller that gives up does not cancel the call the others wait on
        return await asyncio.shield(call)

    async def get_all(self, urls: list[str]) -> list[Any | UpstreamError]:
        """Fetch every URL at once; each slot holds the body or the UpstreamError, in order."""
        results = await asyncio.gather(*(settled(self.get_json(url)) for url in urls))
        return [r if isinstance(r, UpstreamError) else r.body for r in results]

    def kept(self, url: str) -> Fetched[Any] | None:
        """The answer for `url` if it may be served without waiting for a call: fresh,
        or within its stale-while-revalidate window (one background call then asks the
        upstream again)."""
        found = self._kept.get(url)
        if found is None:
            return None
        self._touch(url)
        fetched, stored_at, fresh_until = found
        now = time.monotonic()
        if tracing.active is not None:
            cache = "hit" if now < fresh_until else "stale_while_revalidate"
            tracing.active.event("upstream.kept", **{"url.full": url, "upstream.cache": cache})
        if now < fresh_until:
            _cache_counter("hit").inc()
            left = int(fresh_until - now)
            waited = fetched.fresh_for - left  # since it was stored
            return Fetched(fetched.body, left, fetched.age + waited, fetched.stale, "hit")
        if url not in self._in_flight:
            self._start(url, background=True)
        _cache_counter("stale_while_revalidate").inc()
        age = fetched.age + int(now - stored_at)
        return Fetched(fetched.body, 0, age, True, "stale_while_revalidate")

    def _start(self, url: str, *, background: bool) -> asyncio.Future[Fetched[Any]]:
        call = asyncio.ensure_future(self._fetch(url, background=background))
        self._in_flight[url] = call
        call.add_done_callback(functools.partial(self._landed, url))
        return call

    def _landed(self, url: str, call: asyncio.Future[Fetched[Any]]) -> None:
        if self._in_flight.get(url) is call:
            del self._in_flight[url]
            self._joined.pop(url, None)
        if not call.cancelled():
            call.exception()  # seen, even when every caller had given up

    async def aclose(self) -> None:
        for call in list(self._in_flight.values()):
            call.cancel()
        await self.client.aclose()

    async def _fetch(self, url: str, *, background: bool = False) -> Fetched[Any]:
        started = time.perf_counter()
        try:
            # nobody waits on a background revalidation: it is never hedged
            fetched = await self._call(url, hedge=not background)
        except UpstreamError as error:
            _count_call(error.outcome, started)
            if error.host_failed and (joined := self._joined.pop(url, 0)):
                self.calls.failed_for_others(url, joined)
            if error.code == "not_found":
                self._kept.discard(url)
            stale = await self._stale(url) if self._may_serve_stale(error) else None
            if stale is None:
                raise
            _cache_counter("stale").inc()
            if tracing.active is not None:
                tracing.active.event("upstream.stale", **{"url.full": url, "error": error.code})
            return stale
        if fetched.cache != "hit":  # a hit made no call
            _count_call("ok", started)
        if fetched.cache is not None:
            _cache_counter(fetched.cache).inc()
            if fetched.fresh_for > 0 or fetched.stale_while_revalidate > 0:
                self._kept.put(url, fetched, fetched.fresh_for, fetched.stale_while_revalidate)
            else:  # what was kept for it must not be served again
                self._kept.discard(url)
        return fetched

    async def _call(self, url: str, *, hedge: bool) -> Fetched[Any]:
        status, body, headers, caching = await self.calls.get(url, hedge=hedge)
        if status == 404:
            raise UpstreamError(url, "not_found", "the upstream has no such resource (404)")
        if not 200 <= status < 300:
            raise UpstreamError(
                url, "upstream_error", f"the upstream answered {status}", status=status
            )
        try:
            value = from_json(body)
        except ValueError:
            raise UpstreamError(url, "bad_response", "the upstream's answer is not JSON") from None
        if caching is None:  # UPSTREAM_CACHE=off: nothing is reused, nothing is claimed fresh
            return Fetched(value)
        seen = freshness(headers, now=time.time())
        in_background = 0
        if seen.may_serve_stale:
            in_background = max(self.stale_while_revalidate, seen.stale_while_revalidate)
        return Fetched(value, seen.fresh_for, seen.age, False, cache_result(caching), in_background)

    def _may_serve_stale(self, error: UpstreamError) -> bool:
        # RFC 5861's errors: unreachable, timed out, 5xx. Never a 404 or a bad answer.
        failed = error.code in ("timeout", "unreachable") or (
            error.code == "upstream_error" and (error.status or 0) >= 500
        )
        return failed and self.storage is not None and self.stale_if_error > 0

    async def _stale(self, url: str) -> Fetched[Any] | None:
        assert self.storage is not None
        found = await stale_entry(self.storage, url, within=self.stale_if_error)
        if found is None:
            return None
        entry, seen = found
        if not isinstance(stream := entry.response.stream, AsyncIterator):
            return None
        try:
            value = from_json(await read_chunks(stream, self.max_body_bytes))
        except (ValueError, BodyTooLarge):
            return None
        return Fetched(value, age=seen.age, stale=True, cache="stale")


class KeptAnswers(Generic[T]):
    """Answers the cache would serve without waiting for a call, kept parsed: while
    fresh, and then for their stale-while-revalidate window.

    A hit through httpx and hishel costs about 300 us (request and response objects,
    the RFC state machine, headers and body parsed again); this look-up about 2 us. An
    answer is kept only while the cache itself would serve it without asking, so what
    a client sees does not change. At most `limit` answers, least recently used out
    first: a fixed overhead beside UPSTREAM_CACHE_MAX_BYTES.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # key: (answer, when it was stored, when its freshness ends, when it goes)
        self._answers: OrderedDict[str, tuple[T, float, float, float]] = OrderedDict()

    def get(self, key: str) -> tuple[T, float, float] | None:
        """The answer, the monotonic time it was stored and the time its freshness ends
        (maybe past), if it may still be served."""
        kept = self._answers.get(key)
        if kept is None:
            return None
        answer, stored_at, fresh_until, gone_at = kept
        if gone_at <= time.monotonic():
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return answer, stored_at, fresh_until

    def discard(self, key: str) -> None:
        self._answers.pop(key, None)

    def put(self, key: str, answer: T, fresh_for: float, stale_for: float = 0) -> None:
        now = time.monotonic()
        self._answers[key] = (answer, now, now + fresh_for, now + fresh_for + stale_for)
        self._answers.move_to_end(key)
        if len(self._answers) > self.limit:
            self._answers.popitem(last=False)


def _ignore(key: str) -> None:
    pass


@functools.cache
def _cache_counter(result: CacheResult) -> Any:
    return UPSTREAM_CACHE.labels(result)


@functools.cache
def _outcome_metrics(outcome: str) -> tuple[Any, Any]:
    # labels() takes a lock and builds a key each call; there are a handful of outcomes
    return UPSTREAM_CALLS.labels(outcome), UPSTREAM_SECONDS.labels(outcome)


def _count_call(outcome: str, started: float) -> None:
    calls, seconds = _outcome_metrics(outcome)
    calls.inc()
    seconds.observe(time.perf_counter() - started)
