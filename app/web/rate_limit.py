"""WRITE_RATE_LIMIT: one budget of writes per client, counted with the `limits` library.

Every write of a client counts against the same budget, whichever route it goes to; reads
are never counted. The client is the connection's peer address; behind TRUSTED_PROXIES,
app.web.proxies has already put the forwarded client there. A forwarded header from
anyone else is never believed: any client can invent one to escape its budget.
The window is a moving one, kept in limits' in-memory storage: per process, so with
WORKERS=N or several instances each keeps its own count (see the README).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from quart import Quart, request

from app.web.errors import ApiError

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NAMESPACE = "writes"


class WriteBudget:
    def __init__(self, limit: str) -> None:
        self.limit: RateLimitItem = parse(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def spend(self) -> None:
        """Count a write against its client's budget; 429 with Retry-After when it is spent."""
        if request.method not in WRITE_METHODS:
            return
        client = request.remote_addr or ""
        if await self.limiter.hit(self.limit, NAMESPACE, client):
            return
        stats = await self.limiter.get_window_stats(self.limit, NAMESPACE, client)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(
            429,
            f"This client has spent its budget of {self.limit}; try again later.",
            headers={"Retry-After": str(retry_after)},
        )


def register_write_budget(app: Quart, limit: str) -> None:
    app.before_request(WriteBudget(limit).spend)
