"""Calls to the upstream posts API: one shared client, a concurrency bound, failure mapping.

The blog post's `make_api_calls()` opened a new aiohttp session per request and let any
single failure become a 500. Here one client lives for the life of the process
(`app.lifespan`), every call is bounded by `UPSTREAM_TIMEOUT` (waiting for a free slot
included), at most `UPSTREAM_MAX_CONCURRENCY` calls are in flight across all requests,
and each failure becomes an `UpstreamError` with a code the routes map to a status.

The client keeps httpx's API but by default runs on an aiohttp transport: httpx's own
connection pool (httpcore) collapses under concurrent fan-out (see the README).
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import random
import time
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json

from app.settings import Settings
from app.telemetry.metrics import UPSTREAM_CALLS, UPSTREAM_RETRIES, UPSTREAM_SECONDS

T = TypeVar("T")


class Post(BaseModel):
    """A post, as the upstream gives it."""

    model_config = ConfigDict(frozen=True)

    userId: int
    id: int
    title: str
    body: str


FailureCode = Literal["not_found", "timeout", "unreachable", "upstream_error", "bad_response"]

RETRIES = 2
RETRY_PAUSE = 0.05  # seconds, times the attempt number, with jitter


class UpstreamError(Exception):
    def __init__(self, url: str, code: FailureCode, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.code = code
        self.detail = detail


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
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's one HTTP client. Tests pass httpx's own transport so respx can mock it."""
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
    body = bytearray()
    async for chunk in response.aiter_raw():
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


class Upstream:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        timeout: float,
        max_concurrency: int,
        max_body_bytes: int,
    ) -> None:
        self.client = client
        self.max_body_bytes = max_body_bytes
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)

    async def get_json(self, url: str) -> Any:
        """The parsed JSON body of a 2xx answer from `url`, else raise UpstreamError."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._get_json(url)
        except UpstreamError as error:
            outcome = error.code
            raise
        finally:
            calls, seconds = _outcome_metrics(outcome)
            calls.inc()
            seconds.observe(time.perf_counter() - started)

    async def _get_json(self, url: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._get_with_retries(url)
        except TimeoutError:
            raise UpstreamError(url, "timeout", f"no answer within {self.timeout:g} s") from None
        if status == 404:
            raise UpstreamError(url, "not_found", "the upstream has no such resource (404)")
        if not 200 <= status < 300:
            raise UpstreamError(url, "upstream_error", f"the upstream answered {status}")
        try:
            return from_json(body)
        except ValueError:
            raise UpstreamError(url, "bad_response", "the upstream's answer is not JSON") from None

    async def _get_with_retries(self, url: str) -> tuple[int, bytes]:
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

    async def _get_once(self, url: str) -> tuple[int, bytes]:
        """The status and, for a 2xx, the body, never holding more than max_body_bytes."""
        async with self.client.stream("GET", url) as response:
            try:
                # read even when it is not a success: a connection left mid-body is closed
                return response.status_code, await _read_capped(response, self.max_body_bytes)
            except BodyTooLarge:
                detail = f"the upstream's answer is larger than {self.max_body_bytes} bytes"
            except UnaskedEncoding as error:
                detail = f"the upstream's answer is encoded ({error}), which was not asked for"
            if not response.is_success:
                return response.status_code, b""
        raise UpstreamError(url, "bad_response", detail)

    async def get_all(self, urls: list[str]) -> list[Any | UpstreamError]:
        """Fetch every URL at once; each slot holds the body or the UpstreamError, in order."""
        return await asyncio.gather(*(_settled(self.get_json(url)) for url in urls))

    def post_url(self, post_id: int) -> str:
        # Built only from configuration and an integer: no client picks the address.
        return f"{self.base_url}/posts/{int(post_id)}"

    async def get_post(self, post_id: int) -> Post:
        url = self.post_url(post_id)
        body = await self.get_json(url)
        try:
            return Post.model_validate(body)
        except ValidationError:
            raise UpstreamError(
                url, "bad_response", "the upstream's answer is not a post"
            ) from None

    async def get_posts(self, post_ids: list[int]) -> dict[int, Post | UpstreamError]:
        """Each distinct id fetched once, all at once, within the concurrency bound."""
        unique = list(dict.fromkeys(post_ids))
        results = await asyncio.gather(*(_settled(self.get_post(post_id)) for post_id in unique))
        return dict(zip(unique, results, strict=True))
