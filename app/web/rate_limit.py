"""WRITE_RATE_LIMIT: one budget of writes per client, counted with the `limits` library.

Every authenticated write of a client counts against the same budget, whichever route it
goes to (app.web.writes spends it right after the token is checked); reads are never
counted, nor are writes without a valid token: they are answered 401 at once and do no
work, and counting them would let anyone behind the same address spend a real client's
budget with made-up tokens. The client is the connection's peer address; behind TRUSTED_PROXIES,
app.web.proxies has already put the forwarded client there. A forwarded header from
anyone else is never believed: any client can invent one to escape its budget.

RATE_LIMIT_STORAGE_URL says where the moving window is kept: `memory://` (per process)
or `redis://` (shared by every worker and instance; limits counts with Lua scripts, so N
writes at once against a budget of B admit exactly B). When the store does not answer
within STORE_TIMEOUT, the write is admitted: a broken store must not stop writes, so it
is counted (`rate_limit_store_errors_total`) and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import redis.asyncio
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from quart import Quart, current_app, request

from app.telemetry.metrics import RATE_LIMIT_STORE_ERRORS
from app.web.errors import ApiError

BUDGET = "app.write_budget"
NAMESPACE = "writes"
STORE_TIMEOUT = 1.0
WARN_EVERY = 60.0

log = logging.getLogger(__name__)


class WriteBudget:
    def __init__(self, limit: str, storage_url: str) -> None:
        self.limit: RateLimitItem = parse(limit)
        storage: Storage = MemoryStorage()
        # Ours to close when serving stops (limits never closes what it opens).
        self._redis_pool: redis.asyncio.ConnectionPool | None = None
        if storage_url.startswith("redis://"):
            # on redis-py, the client hishel's storage uses too
            self._redis_pool = redis.asyncio.ConnectionPool.from_url(storage_url)
            storage = RedisStorage(
                f"async+{storage_url}",
                implementation="redispy",
                # documented by limits; its type annotation leaves it out
                connection_pool=self._redis_pool,  # type: ignore[arg-type]
            )
        self.limiter = MovingWindowRateLimiter(storage)
        self._warned_at = -math.inf

    async def close(self) -> None:
        if self._redis_pool is not None:
            await self._redis_pool.aclose()

    async def spend(self) -> None:
        """Count a write against its client's budget; 429 with Retry-After when it is spent."""
        client = request.remote_addr or ""
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                if await self.limiter.hit(self.limit, NAMESPACE, client):
                    return
                stats = await self.limiter.get_window_stats(self.limit, NAMESPACE, client)
        except Exception as error:  # whatever the store's client raises: fail open
            self._store_failed(error)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(
            429,
            f"This client has spent its budget of {self.limit}; try again later.",
            headers={"Retry-After": str(retry_after)},
        )

    def _store_failed(self, error: Exception) -> None:
        RATE_LIMIT_STORE_ERRORS.inc()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "rate-limit store not answering; writes are admitted uncounted",
                extra={"error": type(error).__name__},
            )


def register_write_budget(app: Quart, limit: str, storage_url: str) -> None:
    budget = WriteBudget(limit, storage_url)
    app.extensions[BUDGET] = budget
    app.after_serving(budget.close)


async def spend_write_budget() -> None:
    """Count this write against its client's budget: 429 when it is spent."""
    budget: WriteBudget = current_app.extensions[BUDGET]
    await budget.spend()
