"""The process's one HTTP client for upstream calls, built from plain values.

It keeps httpx's API but by default runs on an aiohttp transport: httpx's own
connection pool (httpcore) collapses under concurrent fan-out (see docs/design.md).
Under the client, an RFC 9111 shared cache (hishel; storage and our fixes under it in
`app.data.http_cache`) reuses answers while the upstream says they are fresh.
"""

from __future__ import annotations

import http.cookiejar
from typing import Any

import aiohttp
import httpx
from hishel import AsyncBaseStorage, CacheOptions
from hishel.httpx import AsyncCacheTransport
from httpx_aiohttp import AiohttpTransport

from app.data.http_cache import DatedAnswers


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
    *,
    max_concurrency: int,
    timeout: float,
    storage: AsyncBaseStorage | None = None,
    keep_unusable: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The client, caching in `storage` when there is one.

    `keep_unusable`: store answers that can be neither reused nor revalidated (only
    stale-if-error can serve them). Tests pass httpx's own transport so respx can mock it.
    """
    limits = httpx.Limits(
        max_connections=max_concurrency, max_keepalive_connections=max_concurrency
    )
    if transport is None:
        # aiohttp keeps cookies of its own unless given a jar that holds none.
        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=max_concurrency, keepalive_timeout=limits.keepalive_expiry
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
            )

        transport = AiohttpTransport(limits=limits, client=session)
    if storage is not None:
        # a shared cache: what is `private` to one user is never stored for all
        cached = DatedAnswers(transport, keep_unusable=keep_unusable)
        transport = AsyncCacheTransport(cached, storage, rfc=CacheOptions(shared=True))
    return httpx.AsyncClient(
        transport=transport,
        limits=limits,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        cookies=http.cookiejar.CookieJar(policy=NoCookies()),
        headers={
            "Accept": "application/json",
            # Bodies are counted as they arrive; a compressed one could grow a thousandfold
            # in one chunk before it was counted, so none is asked for.
            "Accept-Encoding": "identity",
            "User-Agent": "quart-async-demo",
        },
    )
