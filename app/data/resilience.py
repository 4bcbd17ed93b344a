"""The rules a resilient upstream call follows, as state without I/O: a breaker per host,
the budget of extra calls (hedges and retries) and the recent latency hedging waits for.

`app.data.upstream_calls` consults them around each call. They are ours rather than a
library's: the breakers on PyPI for asyncio (purgatory, aiobreaker, pybreaker,
aiocircuitbreaker) open after N *consecutive* failures, wrap a function rather than
answer "may this call go?", and have no budget or latency window; SPEC asks for N
failures within a window, exactly one probe when half-open, and a state per host
exported as a metric, each a few lines here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Literal


class BreakerState(IntEnum):
    """The values of the `upstream_breaker_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


Admission = Literal["call", "probe", "refuse"]


class Breaker:
    """A host's circuit breaker: `failures` failures within `window` seconds open it.

    Open, every call is refused at once for `window` seconds; then one call goes through
    as a probe (half-open). The probe's success closes the breaker; its failure opens it
    for another window. A probe that ends without a verdict (its caller was cancelled)
    leaves the breaker open with the next call allowed to probe.
    """

    def __init__(
        self,
        failures: int,
        window: float,
        on_change: Callable[[BreakerState], None] = lambda state: None,
    ) -> None:
        self.failures = failures
        self.window = window
        self.state = BreakerState.CLOSED
        self._on_change = on_change
        self._failed_at: deque[float] = deque(maxlen=failures)
        self._opened_at = -math.inf
        self._probing = False

    def admit(self) -> Admission:
        if self.state is BreakerState.CLOSED:
            return "call"
        if self._probing or time.monotonic() - self._opened_at < self.window:
            return "refuse"
        self._probing = True
        self._become(BreakerState.HALF_OPEN)
        return "probe"

    def succeeded(self, *, probe: bool) -> None:
        if probe:
            self._probing = False
            self._failed_at.clear()
            self._become(BreakerState.CLOSED)

    def failed(self, *, probe: bool) -> None:
        now = time.monotonic()
        if probe:
            self._probing = False
            self._open(now)
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call admitted before the breaker opened, failing late
        self._failed_at.append(now)
        if len(self._failed_at) == self.failures and now - self._failed_at[0] <= self.window:
            self._open(now)

    def abandoned(self, *, probe: bool) -> None:
        """The call ended with neither success nor failure (cancelled)."""
        if probe:
            self._probing = False
            self._become(BreakerState.OPEN)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failed_at.clear()
        self._become(BreakerState.OPEN)

    def _become(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self._on_change(state)


class ExtraCallBudget:
    """How many extra calls (hedges, retries) may go out: `ratio` of the calls made over
    the last `period` seconds, and at least `floor` in that time (so that a quiet
    service can still retry its first failures).

    Counted in one-second buckets, so each call costs a few additions, never a scan.
    """

    def __init__(self, ratio: float = 0.05, period: int = 60, floor: int = 10) -> None:
        self.ratio = ratio
        self.floor = floor
        self._calls = [0] * period
        self._extras = [0] * period
        self._second = int(time.monotonic())
        self.calls = 0
        self.extras = 0

    def called(self) -> None:
        self._roll()
        self._calls[self._second % len(self._calls)] += 1
        self.calls += 1

    def try_spend(self) -> bool:
        """Whether one more extra call may go; if so, it is counted."""
        self._roll()
        if self.extras >= max(self.floor, self.ratio * self.calls):
            return False
        self._extras[self._second % len(self._extras)] += 1
        self.extras += 1
        return True

    def _roll(self) -> None:
        second = int(time.monotonic())
        if second == self._second:
            return
        period = len(self._calls)
        for passed in range(self._second + 1, min(second, self._second + period) + 1):
            slot = passed % period
            self.calls -= self._calls[slot]
            self.extras -= self._extras[slot]
            self._calls[slot] = self._extras[slot] = 0
        self._second = second


class RecentLatency:
    """The recent latencies of one host's answered calls, and when to hedge a call to it.

    A hedge sent at the 95th percentile answers at about p95 + p50; it can only win
    where the slow calls take longer than that. A call its hedge overtook is recorded
    as infinitely slow. So `hedge_after` is p95 while the
    host's 99th percentile is past p95 + p50 (it has a tail worth cutting), and None
    while it is not (nothing is slow: a hedge would be a wasted call). Worked out
    from the last `keep` samples every `every` samples (a sort of `keep` floats), and
    None until `least` samples have come.
    """

    def __init__(self, keep: int = 512, every: int = 64, least: int = 50) -> None:
        self.keep = keep
        self.every = every
        self.least = least
        self._samples: list[float] = []
        self._next = 0
        self._since = 0
        self.p50 = self.p95 = self.p99 = math.nan
        self.hedge_after: float | None = None

    def record(self, seconds: float) -> None:
        if len(self._samples) < self.keep:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % self.keep
        self._since += 1
        if len(self._samples) >= self.least and (self._since >= self.every or math.isnan(self.p95)):
            self._since = 0
            ordered = sorted(self._samples)
            self.p50, self.p95, self.p99 = (_quantile(ordered, q) for q in (0.5, 0.95, 0.99))
            self.hedge_after = self.p95 if self.p99 > self.p95 + self.p50 else None


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
