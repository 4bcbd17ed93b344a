"""Where the upstream client's HTTP cache keeps answers (UPSTREAM_CACHE), and the three
things we add under hishel so that it keeps RFC 9111 as a shared cache must.

hishel runs the caching rules under the shared httpx client (app.data.upstream_client). It has
no storage in memory, so `MemoryStorage` is ours: bounded in bytes, least recently used
out first. `redis://` uses hishel's own Redis storage, shared by workers and instances,
each entry kept only while it can be served (`ServableRedisStorage`), on a redis-py
connection with a short deadline and a breaker (`guarded_connection`): a
cache store that fails is a miss at once, never the upstream call's time.

hishel reckons an answer's age from its `Date` alone and lends freshness to an answer
that has only `Last-Modified` (RFC 9111's optional heuristic). `DatedAnswers` sits under
it and fixes what it reads: an answer without `Date` gets the time it arrived (RFC 9110
§6.6.1: otherwise it would stay fresh for ever), an `Age` the upstream reports moves
`Date` back by that much (a CDN's copy is older than its `Date` says), and an answer with
no explicit freshness gets `max-age=0`, so it is stored and revalidated, never reused
unchecked (and, when stale-if-error is off, one that cannot be revalidated either is
not stored at all). tests/test_upstream_cache.py holds a test for each.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import httpx
import msgpack
from hishel import AsyncBaseStorage, AsyncRedisStorage, Entry, Headers, Request, Response
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.telemetry.logs import OnceAMinute
from app.telemetry.metrics import UPSTREAM_CACHE_STORE_ERRORS

# What a stored entry costs beyond its packed headers and body: the dictionaries' slots,
# the id, the key and the objects' own headers (measured with tracemalloc, rounded up).
ENTRY_OVERHEAD = 640

# An entry with a validator (ETag, Last-Modified) can still be served after its freshness
# and stale windows, once a 304 renews it: Redis keeps it this much longer for that.
REVALIDATE_WITHIN = 3600
# hishel keeps an expired entry's keys this long, for readers still streaming its body.
SOFT_DELETE = 180
# A Redis store's own deadline per operation, in seconds: a healthy one answers within a
# millisecond, and a store that does not is a miss, never the upstream call's time.
REDIS_TIMEOUT = 0.1
# After a failure the store is skipped at once for this long, then tried again: a dead or
# frozen store costs one short deadline, not one per upstream call.
STORE_SKIPPED_FOR = 5.0


def open_storage(
    cache: str, *, max_bytes: int, max_entry_bytes: int, stale_if_error: float
) -> AsyncBaseStorage | None:
    """The storage UPSTREAM_CACHE names; None when it is `off`.

    `stale_if_error` (UPSTREAM_STALE_IF_ERROR) is how long past its freshness an answer
    may still be served: Redis keeps entries that long, and no longer.
    """
    if cache == "off":
        return None
    if cache == "memory":
        return MemoryStorage(max_bytes=max_bytes, max_entry_bytes=max_entry_bytes)
    client = Redis.from_url(
        cache,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        connection_class=guarded_connection(StoreBreaker(STORE_SKIPPED_FOR)),
    )
    store_log = logging.getLogger(AsyncRedisStorage.__module__)
    if not any(isinstance(f, StoreFailures) for f in store_log.filters):
        store_log.addFilter(StoreFailures())
    return ServableRedisStorage(
        client, stale_if_error=stale_if_error, max_stream_size=max_entry_bytes
    )


class ServableRedisStorage(AsyncRedisStorage):
    """hishel's Redis storage, each entry kept only for as long as it can be served: its
    freshness, then the longest window it may still be served in (stale-if-error, or a
    revalidation if it has a validator), then hishel's SOFT_DELETE. A 304 that renews
    an entry's freshness renews its time in Redis too (hishel keeps the first expiry).
    """

    def __init__(self, client: Redis, *, stale_if_error: float, max_stream_size: int) -> None:
        super().__init__(
            client,
            default_ttl=None,
            max_stream_size=max_stream_size,
            key_prefix="upstream-cache",
            soft_delete_ttl=SOFT_DELETE,
        )
        self.stale_if_error = stale_if_error

    def servable_for(self, headers: Headers) -> float:
        """Seconds from now that an answer with these headers can still be served."""
        seen = freshness(headers, now=time.time())
        windows = [self.stale_if_error if seen.may_serve_stale else 0.0]
        if "ETag" in headers or "Last-Modified" in headers:
            windows.append(REVALIDATE_WITHIN)
        return seen.fresh_for + max(windows)

    async def create_entry(
        self,
        request: Request,
        response: Response,
        key: str,
        *,
        ttl: float | None = None,
        tti: float | None = None,
    ) -> Entry:
        servable_for = self.servable_for(response.headers)
        return await super().create_entry(request, response, key, ttl=servable_for, tti=tti)

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        await super().update_headers(id, headers)
        _, _, done_key = self._data_keys(id)
        try:
            done = await self._client.get(done_key)
        except RedisError:
            return  # hishel's own update has been logged as failed already
        if done is None:
            return
        *_, cache_key = msgpack.unpackb(done)
        now = time.time()
        expires_at = now + self.servable_for(headers)
        await self._extend_expiry(self._idx_key(cache_key.decode()), id, expires_at, now)


class StoreBreaker:
    """Open for `skipped_for` seconds after a store operation failed: every command fails
    at once meanwhile (hishel treats that as a miss, or stores nothing), then the next
    one tries the store again."""

    def __init__(self, skipped_for: float) -> None:
        self.skipped_for = skipped_for
        self._open_until = -math.inf

    def check(self) -> None:
        if time.monotonic() < self._open_until:
            raise RedisConnectionError("the upstream cache's store failed recently; skipped")

    def failed(self) -> None:
        self._open_until = time.monotonic() + self.skipped_for


def guarded_connection(breaker: StoreBreaker) -> type[Connection]:
    """redis-py's connection, with `breaker` on every command it sends (pipelines too)."""

    class GuardedConnection(Connection):
        async def connect(self) -> None:
            breaker.check()
            try:
                await super().connect()  # type: ignore[no-untyped-call]  # unannotated upstream
            except (RedisConnectionError, RedisTimeoutError):
                breaker.failed()
                raise

        async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
            breaker.check()
            try:
                await super().send_packed_command(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError):
                breaker.failed()
                raise

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().read_response(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError):
                breaker.failed()
                raise

    return GuardedConnection


class StoreFailures(OnceAMinute):
    """hishel logs every failed Redis operation with its traceback: two lines per upstream
    call while Redis is down. Each is counted; one a minute goes through, as a warning."""

    def __init__(self) -> None:
        super().__init__(
            logging.ERROR,
            "; the upstream cache's store is not answering (logged once a minute)",
            as_level=logging.WARNING,
        )

    def seen(self, record: logging.LogRecord) -> None:
        UPSTREAM_CACHE_STORE_ERRORS.inc()


# A stored entry: its cache key, its request and response without the body (packed), and
# the body. A tuple of str and bytes: the garbage collector untracks it, so a full cache
# adds nothing to a collection's work (one tracked object per entry made a collection
# of a 64 MiB cache take 57 ms, every request in flight waiting).
_Stored = tuple[str, bytes, bytes]


def _size(stored: _Stored) -> int:
    key, head, body = stored
    return len(key) + len(head) + len(body) + ENTRY_OVERHEAD


def _pack(request: Request, status: int, headers: Headers) -> bytes:
    def lists(h: Headers) -> dict[str, list[str]]:
        return {name: h.get_list(name) or [] for name in h}

    packed: bytes = msgpack.packb(
        (request.method, request.url, lists(request.headers), status, lists(headers))
    )
    return packed


def _unpack(head: bytes) -> tuple[Request, int, Headers]:
    method, url, request_headers, status, headers = msgpack.unpackb(head)
    return Request(method, url, Headers(request_headers)), status, Headers(headers)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class MemoryStorage(AsyncBaseStorage):
    """Answers kept in this process, `max_bytes` in all, least recently used out first.

    Entries are kept packed, so that what they cost is what is counted: a few hundred
    bytes beyond the body, not the thousands a tree of Python objects takes. They are
    keyed by their ids as integers, not UUID objects, for the garbage collector's sake.
    """

    def __init__(self, *, max_bytes: int, max_entry_bytes: int) -> None:
        super().__init__(max_stream_size=max_entry_bytes)
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[int, _Stored] = OrderedDict()  # oldest use first
        self._by_key: dict[str, tuple[int, ...]] = {}

    @property
    def count(self) -> int:
        # not __len__: hishel takes a storage that is falsy for none and makes its own
        return len(self._entries)

    async def create_entry(
        self,
        request: Request,
        response: Response,
        key: str,
        *,
        ttl: float | None = None,
        tti: float | None = None,
    ) -> Entry:
        # ttl and tti are not used: the byte bound decides what stays
        entry_id = uuid.uuid4()
        body = response.stream if isinstance(response.stream, AsyncIterator) else _once(b"")
        head = _pack(request, response.status_code, response.headers)
        saving = self._save(entry_id.int, key, head, body)
        return Entry(entry_id, request, replace(response, stream=saving))

    async def _save(
        self, entry_id: int, key: str, head: bytes, stream: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        # Stored only once the reader has had the whole body: one that stops early (the
        # body was too large, the call was cancelled) leaves nothing behind.
        body = bytearray()
        keeping = True
        async for chunk in stream:
            if keeping:
                body += chunk
                if self.max_stream_size is not None and len(body) > self.max_stream_size:
                    keeping, body = False, bytearray()
            yield chunk
        if keeping:
            self._put(entry_id, (key, head, bytes(body)))

    def _put(self, entry_id: int, stored: _Stored) -> None:
        if _size(stored) > self.max_bytes:
            return
        key = stored[0]
        self._entries[entry_id] = stored
        self._by_key[key] = (*self._by_key.get(key, ()), entry_id)
        self.size += _size(stored)
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, entry_id: int) -> None:
        stored = self._entries.pop(entry_id, None)
        if stored is None:
            return
        self.size -= _size(stored)
        key = stored[0]
        left = tuple(other for other in self._by_key[key] if other != entry_id)
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]

    def touch(self, key: str) -> None:
        """Mark `key`'s entries as just used (FreshAnswers served them without asking)."""
        for entry_id in self._by_key.get(key, ()):
            self._entries.move_to_end(entry_id)

    async def get_entries(self, key: str) -> list[Entry]:
        entries = []
        for entry_id in self._by_key.get(key, ()):
            _, head, body = self._entries[entry_id]
            self._entries.move_to_end(entry_id)
            request, status, headers = _unpack(head)
            response = Response(status, headers, stream=_once(body))
            entries.append(Entry(uuid.UUID(int=entry_id), request, response))
        return entries

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        stored = self._entries.get(id.int)
        if stored is None:
            return
        key, head, body = stored
        request, status, _ = _unpack(head)
        updated = (key, _pack(request, status, headers), body)
        self.size += _size(updated) - _size(stored)
        self._entries[id.int] = updated

    async def remove_entry(self, id: uuid.UUID) -> None:
        self._drop(id.int)


class DatedAnswers(httpx.AsyncBaseTransport):
    """Under hishel: what each upstream answer says about its age, made explicit.

    Without `keep_unusable` (UPSTREAM_STALE_IF_ERROR and UPSTREAM_STALE_WHILE_REVALIDATE
    are 0), an answer with neither freshness, a validator nor a stale-while-revalidate
    window is marked `no-store`: it could never be reused nor
    revalidated, so storing it would only cost every call against such an upstream.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, keep_unusable: bool) -> None:
        self.transport = transport
        self.keep_unusable = keep_unusable

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        headers = response.headers
        date_answer(headers, received=time.time(), status=response.status_code)
        if not self.keep_unusable and _unusable(headers):
            _add_directive(headers, "no-store")
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()


# RFC 9110 §15.1: what a cache may store with no freshness given, and reuse by guessing.
# Not 501: a stored 5xx would push the last good answer out (stale-if-error needs it).
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414})


def date_answer(headers: httpx.Headers, *, received: float, status: int) -> None:
    """Give the answer a `Date` that tells its age; `max-age=0` if it has no freshness.

    A 304 only updates a stored answer's headers: what it leaves out is kept from the
    stored one, so it gets no `max-age=0`; nor does an answer hishel would not store.
    """
    dated = _date(headers)
    if dated is None:
        dated = received
    age = headers.get("Age", "")
    if age.isdigit():
        dated = min(dated, received - int(age))
    headers["Date"] = email.utils.formatdate(dated, usegmt=True)
    if status in HEURISTICALLY_CACHEABLE and not _explicitly_fresh(headers):
        _add_directive(headers, "max-age=0")


def _add_directive(headers: httpx.Headers, directive: str) -> None:
    control = headers.get("Cache-Control", "")
    headers["Cache-Control"] = f"{control}, {directive}" if control else directive


def _date(headers: httpx.Headers | Headers, name: str = "Date") -> float | None:
    value = headers.get(name)
    return None if value is None else _http_date(value)


# Every answer of the same second carries the same Date, and the same few Cache-Control
# values come back: each is parsed once (about 10 us each, ten times per fan-out).
@functools.lru_cache(maxsize=256)
def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


def _unusable(headers: httpx.Headers) -> bool:
    """Not fresh as it arrives, nothing to revalidate it with, and no window of its own
    to be served in while it is asked for again (stale-while-revalidate)."""
    if "ETag" in headers or "Last-Modified" in headers:
        return False
    seen = freshness(headers, now=time.time())
    return seen.fresh_for == 0 and seen.stale_while_revalidate == 0


def _explicitly_fresh(headers: httpx.Headers) -> bool:
    directives = _directives(headers.get("Cache-Control", ""))
    return bool(directives.keys() & {"max-age", "s-maxage"}) or "Expires" in headers


@dataclass(frozen=True, slots=True)
class Freshness:
    """What an answer's headers say about reusing it, counted from `now`."""

    fresh_for: int  # seconds it may still be reused; 0: it must be revalidated first
    age: int  # seconds since the upstream made it
    stale_for: int  # seconds past its freshness; 0 while fresh
    may_serve_stale: bool  # neither no-cache, no-store, must-revalidate nor private
    stale_while_revalidate: int  # the upstream's own RFC 5861 window, in seconds


NEVER_STALE = frozenset({"no-store", "no-cache", "must-revalidate", "proxy-revalidate", "private"})


def freshness(headers: httpx.Headers | Headers, *, now: float) -> Freshness:
    control = _directives(headers.get("Cache-Control", ""))
    dated = _date(headers)
    age = max(0, int(now - dated)) if dated is not None else 0
    lifetime = 0
    for name in ("s-maxage", "max-age"):
        if (value := control.get(name, "")).isdigit():
            lifetime = int(value)
            break
    else:
        expires = _date(headers, "Expires")
        if expires is not None and dated is not None:
            lifetime = max(0, int(expires - dated))
    if control.keys() & {"no-store", "no-cache", "private"}:
        lifetime = 0
    return Freshness(
        fresh_for=max(0, lifetime - age),
        age=age,
        stale_for=max(0, age - lifetime),
        may_serve_stale=not control.keys() & NEVER_STALE,
        stale_while_revalidate=_seconds(control.get("stale-while-revalidate", "")),
    )


def _seconds(value: str) -> int:
    return int(value) if value.isdigit() else 0


@functools.lru_cache(maxsize=256)
def _directives(control: str) -> Mapping[str, str]:
    directives = {}
    for part in control.split(","):
        name, _, value = part.partition("=")
        if name.strip():
            directives[name.strip().lower()] = value.strip().strip('"')
    return MappingProxyType(directives)


async def stale_entry(
    storage: AsyncBaseStorage, key: str, *, within: float
) -> tuple[Entry, Freshness] | None:
    """The newest stored 2xx answer for `key` at most `within` seconds stale (RFC 5861),
    with what its headers say now."""
    now = time.time()
    candidates = []
    for entry in await storage.get_entries(key):
        seen = freshness(entry.response.headers, now=now)
        if (
            200 <= entry.response.status_code < 300
            and seen.may_serve_stale
            and seen.stale_for <= within
        ):
            candidates.append((entry, seen))
    return min(candidates, key=lambda pair: pair[1].age, default=None)
