"""A real upstream on loopback for end-to-end tests (and the benchmarks).

    python -m tools.upstream_stub --port 8901 [--delay 0.05]

Paths, chosen by the tests through UPSTREAM_URLS / UPSTREAM_BASE_URL:
  /posts/{id}            a Post; ids 1-100 exist, any other id is 404
  /slow/{seconds}/{id}   a Post after that many seconds
  /status/{code}         an empty answer with that status
  /garbage               200 with a body that is not JSON
  /close                 closes the connection without answering
  /reset                 resets the connection (RST) without answering
  /hostile/posts/{id}    1: a Post of 200 MB streamed without a length; 2: the same with
                         its Content-Length; 3: a body that never ends; 4: a Post of 20 MB;
                         any other id: a Post that sets a cookie
  /cached/{max_age}/posts/{id}
                         a Post (any id) with Cache-Control: max-age={max_age} and a strong ETag;
                         If-None-Match with that tag answers 304
  /_stats                {"calls", "in_flight", "max_in_flight", "with_cookie", "conditional",
                         "not_modified", "traceparents"} since /_reset
  /_reset                zero the counters and end a failure
  /_fail/{status}        from now on every call answers that status (/_reset ends it)
  /_tail/{every}/{seconds}
                         from now on every {every}-th call takes {seconds} more (a latency tail)
  /_silent               from now on every call is accepted and never answered
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import IO

import httpx
from aiohttp import web

from tools import REPO
from tools.ports import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Counters:
    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.with_cookie = 0
        self.conditional = 0  # calls with If-None-Match or If-Modified-Since
        self.not_modified = 0
        self.fail_status = 0  # /_fail: every call answers this status
        self.tail_every = 0  # /_tail: every n-th call is slower by tail_seconds
        self.tail_seconds = 0.0
        self.silent = False  # /_silent: no call is ever answered
        self.traceparents: list[str] = []  # each call's traceparent header, in order


def post(post_id: int) -> dict[str, object]:
    return {
        "userId": (post_id - 1) // 10 + 1,
        "id": post_id,
        "title": f"post {post_id}",
        "body": "stub",
    }


CHUNK = b"x" * 65536
MB = 1024 * 1024
# /hostile/posts/{id}: (size in bytes or None for endless, whether Content-Length is sent)
HOSTILE_BODIES: dict[int, tuple[int | None, bool]] = {
    1: (200 * MB, False),
    2: (200 * MB, True),
    3: (None, False),
    4: (20 * MB, False),
}


async def stream_post(
    request: web.Request, size: int | None, *, declared: bool
) -> web.StreamResponse:
    """A Post whose body is padded to `size` bytes (None: without end), sent as it is made."""
    head = b'{"userId": 1, "id": %d, "title": "big", "body": "' % int(request.match_info["id"])
    tail = b'"}'
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if declared and size is not None:
        response.content_length = size
    await response.prepare(request)
    await response.write(head)
    left = None if size is None else size - len(head) - len(tail)
    while left is None or left > 0:
        chunk = CHUNK if left is None or left >= len(CHUNK) else CHUNK[:left]
        await response.write(chunk)
        if left is not None:
            left -= len(chunk)
    await response.write(tail)
    await response.write_eof()
    return response


def build_app(delay: float = 0.0, tail: tuple[int, float] = (0, 0.0)) -> web.Application:
    counters = Counters()
    counters.tail_every, counters.tail_seconds = tail

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        counters.calls += 1
        number = counters.calls  # this call's own: the counter moves on while it sleeps
        if "Cookie" in request.headers:
            counters.with_cookie += 1
        if "traceparent" in request.headers and len(counters.traceparents) < 1000:
            counters.traceparents.append(request.headers["traceparent"])
        if "If-None-Match" in request.headers or "If-Modified-Since" in request.headers:
            counters.conditional += 1
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            if counters.silent:
                await asyncio.Event().wait()  # until the client gives up
            if delay:
                await asyncio.sleep(delay)
            if counters.tail_every and number % counters.tail_every == 0:
                await asyncio.sleep(counters.tail_seconds)
            if counters.fail_status:
                return web.Response(status=counters.fail_status)
            return await handler(request)
        finally:
            counters.in_flight -= 1

    async def get_post(request: web.Request) -> web.StreamResponse:
        post_id = int(request.match_info["id"])
        if not 1 <= post_id <= 100:
            return web.json_response({}, status=404)
        return web.json_response(post(post_id))

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.json_response(post(int(request.match_info["id"])))

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]))

    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>not json</html>", content_type="application/json")

    async def close(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError  # nothing more to send

    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        raise asyncio.CancelledError

    async def hostile(request: web.Request) -> web.StreamResponse:
        post_id = int(request.match_info["id"])
        if post_id in HOSTILE_BODIES:
            size, declared = HOSTILE_BODIES[post_id]
            return await stream_post(request, size, declared=declared)
        response = web.json_response(post(post_id))
        response.set_cookie("session", f"for-call-{counters.calls}")
        return response

    async def cached(request: web.Request) -> web.StreamResponse:
        post_id = int(request.match_info["id"])  # any id: the memory drill asks for 100,000
        headers = {
            "Cache-Control": f"max-age={int(request.match_info['max_age'])}",
            "ETag": f'"post-{post_id}"',
        }
        if request.headers.get("If-None-Match") == headers["ETag"]:
            counters.not_modified += 1
            return web.Response(status=304, headers=headers)
        return web.json_response(post(post_id), headers=headers)

    async def stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "calls": counters.calls,
                "in_flight": counters.in_flight,
                "max_in_flight": counters.max_in_flight,
                "with_cookie": counters.with_cookie,
                "conditional": counters.conditional,
                "not_modified": counters.not_modified,
                "traceparents": counters.traceparents,
            }
        )

    async def reset_counters(request: web.Request) -> web.StreamResponse:
        counters.calls = counters.max_in_flight = counters.with_cookie = 0
        counters.conditional = counters.not_modified = counters.fail_status = 0
        counters.tail_every, counters.silent = 0, False
        counters.traceparents = []
        return web.json_response({})

    async def add_tail(request: web.Request) -> web.StreamResponse:
        counters.tail_every = int(request.match_info["every"])
        counters.tail_seconds = float(request.match_info["seconds"])
        return web.json_response({})

    async def go_silent(request: web.Request) -> web.StreamResponse:
        counters.silent = True
        return web.json_response({})

    async def fail(request: web.Request) -> web.StreamResponse:
        counters.fail_status = int(request.match_info["status"])
        return web.json_response({})

    app = web.Application(middlewares=[count])
    app.router.add_get("/posts/{id:-?\\d+}", get_post)
    app.router.add_get("/slow/{seconds}/{id:\\d+}", slow)
    app.router.add_get("/status/{code:\\d{3}}", status)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/close", close)
    app.router.add_get("/reset", reset)
    app.router.add_get("/hostile/posts/{id:\\d+}", hostile)
    app.router.add_get("/cached/{max_age:\\d+}/posts/{id:\\d+}", cached)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_fail/{status:\\d{3}}", fail)
    app.router.add_get("/_reset", reset_counters)
    app.router.add_get("/_tail/{every:\\d+}/{seconds}", add_tail)
    app.router.add_get("/_silent", go_silent)
    return app


@contextlib.contextmanager
def running_stub(delay: float = 0.0, log: IO[bytes] | None = None) -> Iterator[str]:
    """This stub as a process of its own on a free port, until the block ends: its base URL.
    The tests and `make cluster-drill` use it."""
    port = free_port()
    output = log if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.upstream_stub", "--port", str(port), "--delay", str(delay)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the upstream stub exited with {process.returncode}")
            try:
                httpx.get(f"{base}/_stats", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the upstream stub did not answer on {base}") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description="upstream stub on loopback")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument(
        "--tail", default="0/0", help="EVERY/SECONDS: every n-th call takes that much longer"
    )
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (the benchmarks)")
    args = parser.parse_args()
    every, _, seconds = args.tail.partition("/")
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        build_app(args.delay, (int(every), float(seconds))),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        backlog=2048,
        # a client that gave up stops counting as in flight
        handler_cancellation=True,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
