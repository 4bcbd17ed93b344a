"""A cheap, continuous probe of event-loop lag, and a warning that names the culprit.

Every `interval` the probe sleeps and measures how late it woke. Code that blocks the
loop (a sync driver, `time.sleep`, heavy CPU in a handler) makes it late; past
`threshold` it logs a warning naming the routes in flight (or just finished), counts it, and the
lag is exported as a metric. The test suite turns that warning into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from app.metrics import LOOP_BLOCKED, LOOP_LAG

log = logging.getLogger(__name__)


class LoopMonitor:
    def __init__(
        self,
        *,
        threshold: float,
        interval: float = 0.1,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = threshold
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
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - before - self.interval)
            LOOP_LAG.set(lag)
            if self.on_tick is not None:
                self.on_tick()
            if lag > self.threshold:
                LOOP_BLOCKED.inc()
                finished = {rule for when, rule in self.finished if when >= before}
                routes = sorted(set(suspects) | set(self.in_flight) | finished)
                log.warning(
                    "event loop blocked",
                    extra={"blocked_ms": round(lag * 1000, 1), "routes_in_flight": routes},
                )

    def enter(self, route: str) -> None:
        self.in_flight[route] += 1

    def leave(self, route: str) -> None:
        self.in_flight[route] -= 1
        if self.in_flight[route] <= 0:
            del self.in_flight[route]
        self.finished.append((time.monotonic(), route))
