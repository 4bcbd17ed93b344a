"""Several worker processes on one socket: started, replaced when one dies, stopped together.

hypercorn's own multi-worker loop stops every worker when one dies, and then exits 0 (the
dead worker's exit code is overwritten by the others' clean one), so a supervisor that
restarts on failure never learns of it. Here a dead worker is replaced and the others
keep serving; when workers keep dying (more than RESTART_BUDGET per worker within
RESTART_WINDOW seconds, a crash loop no restart will cure) the server stops them all
and exits 1, so that whatever supervises it can act.

Each worker is hypercorn's own uvloop worker, given the shared sockets and a shutdown
event, exactly as hypercorn starts them.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections import deque
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from hypercorn.asyncio.run import uvloop_worker
from hypercorn.config import Config
from hypercorn.typing import WorkerFunc
from prometheus_client import multiprocess

RESTART_WINDOW = 60.0
RESTART_BUDGET = 3
POLL_SECONDS = 0.2

log = logging.getLogger("app.workers")


def supervise(
    config: Config, workers: int, metrics_dir: str | None, target: WorkerFunc = uvloop_worker
) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT (0) or a crash loop (1)."""
    context = multiprocessing.get_context("spawn")
    sockets = config.create_sockets()
    shutdown = context.Event()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def start() -> BaseProcess:
        process = context.Process(
            target=target,
            kwargs={"config": config, "sockets": sockets, "shutdown_event": shutdown},
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

    shutdown.set()
    # Each worker lets its requests finish within graceful_timeout, then exits.
    for process in running:
        process.join(config.graceful_timeout + 5)
        if process.exitcode is None:
            process.terminate()
            process.join()
        _forget(process, metrics_dir)
    for sock in [*sockets.insecure_sockets, *sockets.secure_sockets]:
        sock.close()
    return exit_code


def _forget(process: BaseProcess, metrics_dir: str | None) -> None:
    process.join()
    if metrics_dir is not None and process.pid is not None:
        # its live gauges (pool size, free connections, loop lag) no longer count
        multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
