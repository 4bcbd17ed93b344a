"""A cheap, continuous probe of event-loop lag, and a warning that names the culprit.

Every `interval` the probe sleeps and measures how late it woke. Code that blocks the
loop (a sync driver, `time.sleep`, heavy CPU in a handler) makes it late; past
`threshold` it logs a warning naming the routes in flight (or just finished), counts it, and the
lag is exported as a metric. The test suite turns that warning into a failure.

A loop is also late when the machine gives the process no CPU (a busy host, a browser
parsing 1 MB of JavaScript on the other core): that is not our code blocking, so the
time the thread spent runnable but waiting for a CPU, which Linux counts in
/proc/thread-self/schedstat, is left out before the lag is judged. It is still part of
the exported lag, and of the warning when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from app.telemetry.metrics import LOOP_BLOCKED, LOOP_LAG

log = logging.getLogger(__name__)

SCHEDSTAT = "/proc/thread-self/schedstat"


def waited_for_cpu() -> float:
    """Seconds this thread has spent runnable but not running; 0.0 where Linux does not say."""
    try:
        # procfs is in memory: the read takes microseconds and never waits on a disk
        with open(SCHEDSTAT, "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class LoopMonitor:
    def __init__(
        self,
        *,
        threshold: float,
        interval: float = 0.1,
        on_tick: Callable[[], None] | None = None,
        cpu_wait: Callable[[], float] = waited_for_cpu,
    ) -> None:
        self.threshold = threshold
        self.cpu_wait = cpu_wait
        self.interval = interval
        self.on_tick = on_tick  # other cheap periodic readings (the pool gauges)
        self.in_flight: Counter[str] = Counter()
        # (when it finished, route): a route that blocks the loop often finishes in the
        # same loop step, before the probe wakes up to see it in flight
        self.finished: deque[tuple[float, str]] = deque(maxlen=256)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        while True:
            # routes in flight when the probe went to sleep: one of them is the culprit
            suspects = sorted(self.in_flight)
            before = time.monotonic()
            waited_before = self.cpu_wait()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - before - self.interval)
            LOOP_LAG.set(lag)
            if self.on_tick is not None:
                self.on_tick()
            if lag > self.threshold:
                waited = max(0.0, self.cpu_wait() - waited_before)
                if lag - waited > self.threshold:
                    LOOP_BLOCKED.inc()
                    finished = {rule for when, rule in self.finished if when >= before}
                    routes = sorted(set(suspects) | set(self.in_flight) | finished)
                    log.warning(
                        "event loop blocked",
                        extra={
                            "blocked_ms": round(lag * 1000, 1),
                            "waited_for_cpu_ms": round(waited * 1000, 1),
                            "routes_in_flight": routes,
                        },
                    )

    def enter(self, route: str) -> None:
        self.in_flight[route] += 1

    def leave(self, route: str) -> None:
        self.in_flight[route] -= 1
        if self.in_flight[route] <= 0:
            del self.in_flight[route]
        self.finished.append((time.monotonic(), route))
