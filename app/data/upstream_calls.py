"""One upstream GET, made resilient: bounded in time and concurrency, hedged when the
host is slow, retried when a connection fails, and not made at all while the host's
breaker is open.

`app.data.upstream` asks for an answer here when nothing it keeps will do; what comes
back is the status, the body (never more than `max_body_bytes` of it) and the headers,
or an `UpstreamError` naming why there is none. The rules (breaker, extra-call budget,
recent latency) are state in `app.data.resilience`; the client under it all comes from
`app.data.upstream_client`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import httpx

from app.data.resilience import Breaker, BreakerState, ExtraCallBudget, RecentLatency
from app.telemetry import tracing
from app.telemetry.metrics import (
    UPSTREAM_BREAKER_STATE,
    UPSTREAM_BREAKER_TRANSITIONS,
    UPSTREAM_HEDGES,
    UPSTREAM_RETRIES,
)

FailureCode = Literal["not_found", "timeout", "unreachable", "upstream_error", "bad_response"]
# status, body (of a 2xx), headers, and hishel's account of what the cache did (or None)
Answer = tuple[int, bytes, httpx.Headers, Any]
HedgeAfter = float | Literal["auto"] | None  # seconds; auto: the host's recent p95; None: off
CacheResult = Literal["hit", "miss", "revalidated", "stale", "stale_while_revalidate"]

RETRY_PAUSE = 0.05  # seconds, times the attempt number, with jitter

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    def __init__(
        self,
        url: str,
        code: FailureCode,
        detail: str,
        *,
        status: int | None = None,
        called: bool = True,
    ) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.code = code
        self.detail = detail
        self.status = status  # the upstream's, when it answered
        self.called = called  # False: the breaker was open, nothing was sent

    @property
    def host_failed(self) -> bool:
        """What the host's breaker counts as a failure: no answer, or a 5xx."""
        if self.code == "upstream_error":
            return (self.status or 0) >= 500
        return self.called and self.code in ("timeout", "unreachable")

    @property
    def outcome(self) -> str:
        """Its label in upstream_calls_total."""
        return self.code if self.called else "breaker_open"


class BodyTooLarge(Exception):
    pass


class UnaskedEncoding(Exception):
    pass


async def read_chunks(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body; BodyTooLarge as soon as it passes `limit` bytes."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnaskedEncoding(encoding)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    return await read_chunks(response.aiter_raw(), limit)


def classify(error: httpx.TransportError) -> tuple[FailureCode, str]:
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


class Host:
    """What is known of one upstream host: its breaker (None when off) and latency."""

    def __init__(self, name: str, breaker: tuple[int, float] | None) -> None:
        self.name = name
        self.latency = RecentLatency()
        self.breaker = None
        if breaker is not None:
            failures, window = breaker
            self.breaker = Breaker(failures, window, functools.partial(_breaker_moved, name))
            UPSTREAM_BREAKER_STATE.labels(name).set(BreakerState.CLOSED)


def _breaker_moved(host: str, state: BreakerState) -> None:
    UPSTREAM_BREAKER_STATE.labels(host).set(state)
    UPSTREAM_BREAKER_TRANSITIONS.labels(host, state.name.lower()).inc()
    if state is BreakerState.OPEN:
        log.warning("upstream %s: breaker open; calls fail at once until a probe answers", host)
    elif state is BreakerState.CLOSED:
        log.warning("upstream %s: breaker closed; a probe answered", host)


class UpstreamCalls:
    """Makes the GETs: at most `max_concurrency` in flight, each within `timeout`
    (the wait for a slot, retries and a hedge included)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        max_concurrency: int,
        max_body_bytes: int,
        cache_keyed: bool,
        retries: int = 1,
        hedge_after: HedgeAfter = None,
        breaker: tuple[int, float] | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.retries = retries
        self.hedge_after = hedge_after
        self.breaker = breaker
        self.cache_keyed = cache_keyed
        self.budget = ExtraCallBudget()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._hosts: dict[str, Host] = {}

    def host(self, url: str) -> Host:
        name = url.split("/", 3)[2]  # scheme://host[:port]/...: the URLs are ours
        known = self._hosts.get(name)
        if known is None:
            known = self._hosts[name] = Host(name, self.breaker)
        return known

    async def get(self, url: str, *, hedge: bool = True) -> Answer:
        """The upstream's answer to a GET of `url`. `hedge=False` for a call nobody
        waits on (a background revalidation)."""
        host = self.host(url)
        breaker = host.breaker
        admission = "call" if breaker is None else breaker.admit()
        if admission == "refuse":
            raise UpstreamError(
                url, "unreachable", "not called: the upstream's breaker is open after "
                "repeated failures", called=False,
            )  # fmt: skip
        probe = admission == "probe"
        self.budget.called()
        healthy: bool | None = None  # what the breaker learns; None: nothing (cancelled)
        # a call's latency counts from here, as the hedge's delay does: the wait for a
        # slot and for the loop to run it included
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                delay = None if probe or not hedge else self._hedge_delay(host)
                if delay is None:
                    retries = 0 if probe else self.retries
                    role = "probe" if probe else "call" if hedge else "revalidation"
                    answer = await self._with_retries(url, retries, host, began, role)
                else:
                    answer = await self._hedged(url, host, delay, began)
            healthy = answer[0] < 500
            return answer
        except TimeoutError:
            healthy = False
            raise UpstreamError(url, "timeout", f"no answer within {self.timeout:g} s") from None
        except UpstreamError as error:
            healthy = not error.host_failed
            raise
        finally:
            if breaker is not None:
                if healthy is None:
                    breaker.abandoned(probe=probe)
                elif healthy:
                    breaker.succeeded(probe=probe)
                else:
                    breaker.failed(probe=probe)

    def failed_for_others(self, url: str, count: int) -> None:
        """`count` more requests than the call's own met its failure (they had joined it):
        the breaker counts each. Otherwise, with coalescing, a silent host asked for two
        URLs fails two calls per timeout and never reaches the breaker's threshold,
        while every request waits the whole timeout."""
        breaker = self.host(url).breaker
        if breaker is not None:
            for _ in range(count):
                breaker.failed(probe=False)

    def _hedge_delay(self, host: Host) -> float | None:
        if self.hedge_after == "auto":
            return host.latency.hedge_after
        return self.hedge_after

    async def _hedged(self, url: str, host: Host, delay: float, began: float) -> Answer:
        """The first complete answer of the call and, if it has not answered after
        `delay`, one identical call; the other is cancelled and awaited."""
        first = asyncio.ensure_future(self._with_retries(url, self.retries, host, began))
        running: set[asyncio.Future[Answer]] = {first}
        try:
            done, running = await asyncio.wait(running, timeout=delay)
            if done:
                return first.result()
            if self._slots.locked() or not self.budget.try_spend():
                _hedge_counter("skipped").inc()
                return await first
            # its latency is not the host's as a first call meets it: not recorded
            hedge = asyncio.ensure_future(self._with_retries(url, self.retries, role="hedge"))
            running.add(hedge)
            failure: BaseException | None = None
            while running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for attempt in done:
                    if (error := attempt.exception()) is None:
                        if attempt is hedge:
                            _hedge_counter("won").inc()
                            # never answered, and slower than anything measured: left
                            # out, the tail the hedges cut would vanish from the
                            # samples, and auto hedging would stop
                            host.latency.record(math.inf)
                        else:
                            _hedge_counter("lost").inc()
                        return attempt.result()
                    failure = failure or error
            assert failure is not None
            raise failure
        finally:
            for attempt in running:
                attempt.cancel()
            if running:
                # a loser leaves nothing behind: its connection is released or closed
                await asyncio.gather(*running, return_exceptions=True)

    async def _with_retries(
        self,
        url: str,
        retries: int,
        host: Host | None = None,
        began: float = 0.0,
        role: str = "call",
    ) -> Answer:
        """The answer; with `host`, its latency since `began` is recorded. `role` names
        the first attempt in its trace span (the others are retries)."""
        # GET is idempotent: a connection refused, reset or closed before any answer is
        # tried again after a jittered pause, so that many callers do not come back at
        # once; each retry is an extra call, within the budget hedges share.
        for attempt in range(retries + 1):
            try:
                async with self._slots:
                    if tracing.active is None:
                        answer = await self._get_once(url)
                    else:
                        answer = await self._traced(url, role if attempt == 0 else "retry")
                caching = answer[3]
                went_out = caching is None or not caching["from_cache"] or caching["revalidated"]
                if host is not None and went_out:
                    host.latency.record(time.perf_counter() - began)
                return answer
            except httpx.TransportError as error:
                code, detail = classify(error)
                if code == "timeout":
                    raise TimeoutError from None
                if attempt == retries or not self.budget.try_spend():
                    raise UpstreamError(url, code, detail) from None
            UPSTREAM_RETRIES.inc()
            await asyncio.sleep(RETRY_PAUSE * (attempt + 1) * random.uniform(0.5, 1.5))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    async def _traced(self, url: str, role: str) -> Answer:
        assert tracing.active is not None
        with tracing.active.client_span(url, role) as (span, headers):
            answer = await self._get_once(url, headers)
            caching = answer[3]
            tracing.active.answered(span, answer[0], cache_result(caching) if caching else None)
            return answer

    async def _get_once(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        """The answer, with the body of a 2xx, never holding more than max_body_bytes."""
        # the cache key is the URL, so that a stale answer can be found by it
        extensions = _cache_key(url) if self.cache_keyed else None
        async with self.client.stream(
            "GET", url, headers=headers, extensions=extensions
        ) as response:
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


def cache_result(caching: Any) -> CacheResult:
    """What hishel's account of an answer (its `caching` extension) says it did."""
    if caching["from_cache"]:
        return "revalidated" if caching["revalidated"] else "hit"
    return "miss"


def _cache_key(url: str) -> dict[str, Any]:
    return {"caching": {"key": url}}


@functools.cache
def _hedge_counter(outcome: str) -> Any:
    return UPSTREAM_HEDGES.labels(outcome)
