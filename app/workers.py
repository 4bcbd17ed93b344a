"""Serving: one process, or several worker processes on one socket; each drains, then stops.

`serve_worker` is one serving process: hypercorn's own serving loop on uvloop, with a
stop that drains first. Told to stop (SIGTERM or Ctrl-C with one process; the
supervisor's event with several), it answers `/readyz` 503 for DRAIN_SECONDS while it
still serves everything, so a load balancer takes it out before its listener closes; then
hypercorn's graceful stop lets requests in flight finish within SHUTDOWN_GRACE.

`supervise` runs several of them.
hypercorn's own multi-worker loop stops every worker when one dies, and then exits 0 (the
dead worker's exit code is overwritten by the others' clean one), so a supervisor that
restarts on failure never learns of it. Here a dead worker is replaced and the others
keep serving; when workers keep dying (more than RESTART_BUDGET per worker within
RESTART_WINDOW seconds, a crash loop no restart will cure) the server stops them all
and exits 1, so that whatever supervises it can act.

"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from types import FrameType

import h11
import uvloop
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.utils import load_application
from prometheus_client import multiprocess
from werkzeug.http import HTTP_STATUS_CODES

from app.lifespan import start_draining
from app.telemetry.requests import REQUEST_ID_HEADER, new_request_id, observe_unparsed
from app.web.errors import PROBLEM_JSON, problem_body

RESTART_WINDOW = 60.0
RESTART_BUDGET = 3
POLL_SECONDS = 0.2

log = logging.getLogger("app.workers")


def serve_worker(
    config: Config,
    sockets: Sockets,
    drain_seconds: float,
    stopping: EventType | None = None,
) -> None:
    """Serve until told to stop (`stopping`, or SIGTERM/SIGINT when None), drain, stop."""
    application = load_application(config.application_path, config.wsgi_max_body_size)
    from app.runtime import settings  # read once, by loading the application above

    if not settings.http2:
        serve_http11_only()
    answer_unparsed_requests_with_problems()

    async def drained() -> None:
        await _told_to_stop(stopping)
        from app.asgi import app  # loaded above: the Quart app this process serves

        start_draining(app)
        if drain_seconds > 0:
            log.info("draining: /readyz answers 503", extra={"seconds": drain_seconds})
            await asyncio.sleep(drain_seconds)

    # uvloop: hypercorn's asyncio loop had a p99 of up to 2 s under load here
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(worker_serve(application, config, sockets=sockets, shutdown_trigger=drained))


def serve_http11_only() -> None:
    """No cleartext HTTP/2: hypercorn switches a connection to it on the prior-knowledge
    preface or an `Upgrade: h2c`, with no setting to say no, and a client that opens
    streams and resets them at once (rapid reset, CVE-2023-44487) grew this process from
    82 to 212 MB with 10 connections of 5,000 streams each. Without the switch an upgrade
    is ignored (the request is answered in HTTP/1.1, as RFC 9110 allows) and a preface
    gets an HTTP/1.1 answer (a 404 problem for its `PRI *`), never an HTTP/2 connection."""

    async def answer_in_http11(self: H11Protocol, event: h11.Request) -> None:
        return None

    H11Protocol._check_protocol = answer_in_http11  # type: ignore[method-assign]


# What hypercorn refuses before the app sees the request, and why, for the problem's detail.
UNPARSED = {
    400: "The request is not HTTP/1.1 the server can read: a malformed request line or"
    " header, a bad Content-Length, or no Host.",
    501: "The request uses a transfer coding the server does not implement.",
}


def answer_unparsed_requests_with_problems() -> None:
    """hypercorn answers a request h11 cannot parse (a NUL in a header, a raw non-ASCII
    byte in the target, a bad Content-Length, HTTP/1.1 without Host, a transfer coding
    other than chunked) itself: an empty 400 or 501, with neither a type nor a request id,
    in no log line and no metric. It becomes a problem like every other answer."""

    async def send_problem(self: H11Protocol, status_code: int) -> None:
        request_id = new_request_id()
        detail = UNPARSED.get(status_code, HTTP_STATUS_CODES[status_code])
        body = problem_body(status_code, detail)
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())
        observe_unparsed(status_code, request_id)

    H11Protocol._send_error_response = send_problem  # type: ignore[method-assign]


async def _told_to_stop(stopping: EventType | None) -> None:
    """Until SIGTERM (SIGINT too with one process), the supervisor's `stopping` event, or,
    for a worker, its parent gone: every way out drains the same."""
    told = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A worker gets SIGTERM too when the whole process group is told to stop (systemd's
    # KillMode=control-group, kill -- -PGID); left at its default it would die mid-answer.
    loop.add_signal_handler(signal.SIGTERM, told.set)
    if stopping is None:
        loop.add_signal_handler(signal.SIGINT, told.set)
        await told.wait()
        return
    # the supervisor that started this worker: it may have died before this line ran
    supervisor = multiprocessing.parent_process()
    parent = supervisor.pid if supervisor is not None else os.getppid()
    # process-shared state: polled, as hypercorn does
    while not (told.is_set() or stopping.is_set()):
        if os.getppid() != parent:
            log.warning("the supervisor is gone; this worker stops", extra={"parent": parent})
            return
        await asyncio.sleep(POLL_SECONDS)


def supervise(
    config: Config,
    workers: int,
    metrics_dir: str | None,
    drain_seconds: float = 0.0,
    target: Callable[..., None] = serve_worker,
) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT (0) or a crash loop (1)."""
    context = multiprocessing.get_context("spawn")
    sockets = config.create_sockets()
    shutdown = context.Event()  # each worker drains, then stops
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        tell_workers()  # now, not at the loop's next turn: /readyz turns 503 everywhere at once

    def tell_workers() -> None:
        """Each worker drains, lets its requests finish within graceful_timeout, then
        exits; a worker already stopping takes a second word as the first."""
        shutdown.set()
        for process in running:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def start() -> BaseProcess:
        process = context.Process(
            target=target,
            kwargs={
                "config": config,
                "sockets": sockets,
                "drain_seconds": drain_seconds,
                "stopping": shutdown,
            },
        )
        process.start()
        return process

    # Workers inherit SIGINT ignored: Ctrl-C reaches the whole process group, and only
    # this process decides how they stop (through `shutdown`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    running = [start() for _ in range(workers)]
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    deaths: deque[float] = deque()
    exit_code = 0
    while not stopping:
        wait([process.sentinel for process in running], timeout=POLL_SECONDS)
        for process in [process for process in running if process.exitcode is not None]:
            running.remove(process)
            _forget(process, metrics_dir)
            if stopping:
                break
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - RESTART_WINDOW:
                deaths.popleft()
            if len(deaths) > RESTART_BUDGET * workers:
                log.critical(
                    "workers keep dying; stopping the server",
                    extra={"deaths": len(deaths), "window_s": RESTART_WINDOW},
                )
                exit_code = 1
                stopping = True
                break
            replacement = start()
            log.error(
                "worker died; started another",
                extra={
                    "worker_pid": process.pid,
                    "exit_code": process.exitcode,
                    "new_pid": replacement.pid,
                },
            )
            running.append(replacement)

    tell_workers()
    # Each worker listens on its own copy until its drain ends. Once the last one closes,
    # a new connection must be refused: while this copy stayed open the kernel went on
    # accepting connections that no process would answer, reset when this one exited.
    for sock in [*sockets.insecure_sockets, *sockets.secure_sockets]:
        sock.close()
    for process in running:
        process.join(drain_seconds + config.graceful_timeout + 5)
        if process.exitcode is None:
            process.terminate()
            process.join()
        _forget(process, metrics_dir)
    log.info("every worker has stopped", extra={"exit_code": exit_code})
    return exit_code


def _forget(process: BaseProcess, metrics_dir: str | None) -> None:
    process.join()
    if metrics_dir is not None and process.pid is not None:
        # its live gauges (pool size, free connections, loop lag) no longer count
        multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
