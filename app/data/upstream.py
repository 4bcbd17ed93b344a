"""Calls to the upstream posts API: one shared client, a concurrency bound, failure mapping.

The blog post's `make_api_calls()` opened a new aiohttp session per request and let any
single failure become a 500. Here one client lives for the life of the process
(`app.lifespan`), every call is bounded by `UPSTREAM_TIMEOUT` (waiting for a free slot
included), at most `UPSTREAM_MAX_CONCURRENCY` calls are in flight across all requests,
and each failure becomes an `UpstreamError` with a code the routes map to a status.

Under the client, an RFC 9111 cache (hishel; storage in `app.data.http_cache`) reuses
answers while the upstream says they are fresh. On top of it, `Upstream` answers what is
fresh without a call (`FreshAnswers`), lets identical GETs in flight share one call
(UPSTREAM_COALESCE), and serves a stored answer when the upstream fails
(UPSTREAM_STALE_IF_ERROR).

The client keeps httpx's API but by default runs on an aiohttp transport: httpx's own
connection pool (httpcore) collapses under concurrent fan-out (see docs/design.md).
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import aiohttp
import httpx
from hishel import AsyncBaseStorage, CacheOptions
from hishel.httpx import AsyncCacheTransport
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json

from app.data.http_cache import (
    DatedAnswers,
    FreshAnswers,
    MemoryStorage,
    freshness,
    stale_entry,
)
from app.settings import Settings
from app.telemetry.metrics import (
    UPSTREAM_CACHE,
    UPSTREAM_CALLS,
    UPSTREAM_COALESCED,
    UPSTREAM_RETRIES,
    UPSTREAM_SECONDS,
)

T = TypeVar("T")


class Post(BaseModel):
    """A post, as the upstream gives it."""

    model_config = ConfigDict(frozen=True)

    userId: int
    id: int
    title: str
    body: str


FailureCode = Literal["not_found", "timeout", "unreachable", "upstream_error", "bad_response"]
CacheResult = Literal["hit", "miss", "revalidated", "stale"]
# status, body (of a 2xx), headers, and hishel's account of what the cache did (or None)
Answer = tuple[int, bytes, httpx.Headers, Any]

RETRIES = 2
FRESH_ANSWERS = 1024  # parsed answers kept while fresh (about 1 MB); see FreshAnswers
RETRY_PAUSE = 0.05  # seconds, times the attempt number, with jitter


class UpstreamError(Exception):
    def __init__(
        self, url: str, code: FailureCode, detail: str, *, status: int | None = None
    ) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.code = code
        self.detail = detail
        self.status = status  # the upstream's, when it answered


class NoCookies(http.cookiejar.CookiePolicy):
    """A cookie policy that stores nothing and sends nothing.

    The client is shared by every request: a cookie one upstream answer sets would go
    out on calls made for other users.
    """

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def open_client(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    storage: AsyncBaseStorage | None = None,
) -> httpx.AsyncClient:
    """The process's one HTTP client, caching in `storage` when there is one.

    Tests pass httpx's own transport so respx can mock it.
    """
    limits = httpx.Limits(
        max_connections=settings.upstream_max_concurrency,
        max_keepalive_connections=settings.upstream_max_concurrency,
    )
    if transport is None:
        # aiohttp keeps cookies of its own unless given a jar that holds none.
        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.upstream_max_concurrency,
                    keepalive_timeout=limits.keepalive_expiry,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
            )

        transport = AiohttpTransport(limits=limits, client=session)
    if storage is not None:
        # a shared cache: what is `private` to one user is never stored for all
        cached = DatedAnswers(transport, keep_unusable=settings.upstream_stale_if_error > 0)
        transport = AsyncCacheTransport(cached, storage, rfc=CacheOptions(shared=True))
    return httpx.AsyncClient(
        transport=transport,
        limits=limits,
        timeout=httpx.Timeout(settings.upstream_timeout),
        follow_redirects=False,
        cookies=http.cookiejar.CookieJar(policy=NoCookies()),
        headers={
            "Accept": "application/json",
            # Bodies are counted as they arrive; a compressed one could grow a thousandfold
            # in one chunk before it was counted, so none is asked for (see _read_capped).
            "Accept-Encoding": "identity",
            "User-Agent": "quart-async-demo",
        },
    )


class BodyTooLarge(Exception):
    pass


class UnaskedEncoding(Exception):
    pass


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, read as it streams; BodyTooLarge as soon as it passes `limit` bytes."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnaskedEncoding(encoding)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    return await _read_chunks(response.aiter_raw(), limit)


async def _read_chunks(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


async def _settled(call: Awaitable[T]) -> T | UpstreamError:
    """The call's result, or its UpstreamError as a value: one failure never fails a batch."""
    try:
        return await call
    except UpstreamError as error:
        return error


@functools.cache
def _outcome_metrics(outcome: str) -> tuple[Any, Any]:
    # labels() takes a lock and builds a key each call; there are six outcomes
    return UPSTREAM_CALLS.labels(outcome), UPSTREAM_SECONDS.labels(outcome)


def _classify(error: httpx.TransportError) -> tuple[FailureCode, str]:
    # httpx-aiohttp maps most aiohttp connection errors (refused, reset, closed without an
    # answer) to httpx.ConnectTimeout, so judge by the aiohttp error underneath when there
    # is one.
    cause = error.__cause__
    if isinstance(cause, aiohttp.ClientError):
        timed_out = isinstance(cause, TimeoutError)
        refused = isinstance(cause, aiohttp.ClientConnectorError)
    else:
        timed_out = isinstance(error, httpx.TimeoutException)
        refused = isinstance(error, httpx.ConnectError)
    if timed_out:
        return "timeout", "the upstream did not answer in time"
    if refused:
        return "unreachable", "could not connect to the upstream"
    return "unreachable", "the upstream closed the connection without a complete answer"


class Fetched(NamedTuple, Generic[T]):
    """An upstream answer's parsed body and what the HTTP cache knew of it.

    A NamedTuple: made several times per upstream call, ten calls per fan-out, where a
    frozen dataclass's field-by-field set-up shows in the instruction count.
    """

    body: T
    fresh_for: int = 0  # seconds it may still be reused without asking the upstream
    age: int = 0  # seconds since the upstream made it
    stale: bool = False  # served past its freshness because the upstream failed
    cache: CacheResult | None = None  # None when UPSTREAM_CACHE is off


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
        coalesce: bool = True,
    ) -> None:
        self.client = client
        self.max_body_bytes = max_body_bytes
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.storage = storage
        self.stale_if_error = stale_if_error
        self.coalesce = coalesce
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight: dict[str, asyncio.Future[Fetched[Any]]] = {}
        self._fresh: FreshAnswers[Fetched[Any]] = FreshAnswers(FRESH_ANSWERS)
        # served from _fresh, an answer is still in use: the memory storage keeps it longer
        self._touch = storage.touch if isinstance(storage, MemoryStorage) else _ignore

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
            call = asyncio.ensure_future(self._fetch(url))
            self._in_flight[url] = call
            call.add_done_callback(functools.partial(self._landed, url))
        else:
            UPSTREAM_COALESCED.inc()
        # shielded: a caller that gives up does not cancel the call the others wait on
        return await asyncio.shield(call)

    def kept(self, url: str) -> Fetched[Any] | None:
        """The answer for `url` if the cache holds it fresh: no call, no wait."""
        fresh = self._fresh.get(url)
        if fresh is None:
            return None
        _cache_counter("hit").inc()
        self._touch(url)
        fetched, fresh_until = fresh
        left = int(fresh_until - time.monotonic())
        waited = fetched.fresh_for - left  # since it was stored
        return Fetched(fetched.body, left, fetched.age + waited, fetched.stale, "hit")

    def _landed(self, url: str, call: asyncio.Future[Fetched[Any]]) -> None:
        if self._in_flight.get(url) is call:
            del self._in_flight[url]
        if not call.cancelled():
            call.exception()  # seen, even when every caller had given up

    async def aclose(self) -> None:
        for call in list(self._in_flight.values()):
            call.cancel()
        await self.client.aclose()

    async def _fetch(self, url: str) -> Fetched[Any]:
        started = time.perf_counter()
        try:
            fetched = await self._call(url)
        except UpstreamError as error:
            _count_call(error.code, started)
            stale = await self._stale(url) if self._may_serve_stale(error) else None
            if stale is None:
                raise
            _cache_counter("stale").inc()
            return stale
        if fetched.cache != "hit":  # a hit made no call
            _count_call("ok", started)
        if fetched.cache is not None:
            _cache_counter(fetched.cache).inc()
            if fetched.fresh_for > 0:
                self._fresh.put(url, fetched, fetched.fresh_for)
        return fetched

    async def _call(self, url: str) -> Fetched[Any]:
        try:
            async with asyncio.timeout(self.timeout):
                status, body, headers, caching = await self._get_with_retries(url)
        except TimeoutError:
            raise UpstreamError(url, "timeout", f"no answer within {self.timeout:g} s") from None
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
        return Fetched(value, fresh_for=seen.fresh_for, age=seen.age, cache=_cache_result(caching))

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
            value = from_json(await _read_chunks(stream, self.max_body_bytes))
        except (ValueError, BodyTooLarge):
            return None
        return Fetched(value, age=seen.age, stale=True, cache="stale")

    async def _get_with_retries(self, url: str) -> Answer:
        # GET is idempotent: a connection refused, reset or closed before any answer is
        # tried again, a bounded number of times, after a jittered pause so that many
        # callers do not come back at once. All of it within the caller's timeout.
        for attempt in range(RETRIES + 1):
            try:
                async with self._slots:
                    return await self._get_once(url)
            except httpx.TransportError as error:
                code, detail = _classify(error)
                if code == "timeout":
                    raise TimeoutError from None
                if attempt == RETRIES:
                    raise UpstreamError(url, code, detail) from None
            UPSTREAM_RETRIES.inc()
            await asyncio.sleep(RETRY_PAUSE * (attempt + 1) * random.uniform(0.5, 1.5))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_once(self, url: str) -> Answer:
        """The answer, with the body of a 2xx, never holding more than max_body_bytes."""
        # the cache key is the URL, so that _stale finds what the cache stored
        extensions = None if self.storage is None else _cache_key(url)
        async with self.client.stream("GET", url, extensions=extensions) as response:
            caching = response.extensions.get("caching")
            try:
                # read even when it is not a success: a connection left mid-body is closed
                body = await _read_capped(response, self.max_body_bytes)
                return response.status_code, body, response.headers, caching
            except BodyTooLarge:
                detail = f"the upstream's answer is larger than {self.max_body_bytes} bytes"
            except UnaskedEncoding as error:
                detail = f"the upstream's answer is encoded ({error}), which was not asked for"
            if not response.is_success:
                return response.status_code, b"", response.headers, caching
        raise UpstreamError(url, "bad_response", detail)

    async def get_all(self, urls: list[str]) -> list[Any | UpstreamError]:
        """Fetch every URL at once; each slot holds the body or the UpstreamError, in order."""
        results = await asyncio.gather(*(_settled(self.get_json(url)) for url in urls))
        return [r if isinstance(r, UpstreamError) else r.body for r in results]

    def post_url(self, post_id: int) -> str:
        # Built only from configuration and an integer: no client picks the address.
        return f"{self.base_url}/posts/{int(post_id)}"

    async def get_post(self, post_id: int) -> Fetched[Post]:
        url = self.post_url(post_id)
        return _as_post(url, await self.get_json(url))

    async def get_posts(self, post_ids: list[int]) -> dict[int, Fetched[Post] | UpstreamError]:
        """Each distinct id fetched once, all at once, within the concurrency bound."""
        unique = list(dict.fromkeys(post_ids))
        results = {} if self.storage is None else self._kept_posts(unique)
        missing = [post_id for post_id in unique if post_id not in results]
        fetched = await asyncio.gather(*(_settled(self.get_post(post_id)) for post_id in missing))
        results.update(zip(missing, fetched, strict=True))
        return {post_id: results[post_id] for post_id in unique}

    def _kept_posts(self, post_ids: list[int]) -> dict[int, Fetched[Post] | UpstreamError]:
        # what the cache holds fresh is answered at once, without a task per post
        kept = {}
        for post_id in post_ids:
            url = self.post_url(post_id)
            if (fetched := self.kept(url)) is not None:
                kept[post_id] = _post_or_error(url, fetched)
        return kept


def _as_post(url: str, fetched: Fetched[Any]) -> Fetched[Post]:
    try:
        post = Post.model_validate(fetched.body)
    except ValidationError:
        raise UpstreamError(url, "bad_response", "the upstream's answer is not a post") from None
    return Fetched(post, fetched.fresh_for, fetched.age, fetched.stale, fetched.cache)


def _post_or_error(url: str, fetched: Fetched[Any]) -> Fetched[Post] | UpstreamError:
    try:
        return _as_post(url, fetched)
    except UpstreamError as error:
        return error


def _cache_key(url: str) -> dict[str, Any]:
    return {"caching": {"key": url}}


def _cache_result(caching: Any) -> CacheResult:
    """What hishel's account of an answer (its `caching` extension) says it did."""
    if caching["from_cache"]:
        return "revalidated" if caching["revalidated"] else "hit"
    return "miss"


def _ignore(key: str) -> None:
    pass


@functools.cache
def _cache_counter(result: CacheResult) -> Any:
    return UPSTREAM_CACHE.labels(result)


def _count_call(outcome: str, started: float) -> None:
    calls, seconds = _outcome_metrics(outcome)
    calls.inc()
    seconds.observe(time.perf_counter() - started)
