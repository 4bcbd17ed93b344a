"""WRITE_RATE_LIMIT: writes per client address, with quart-rate-limiter.

The library keys a limit per route; the spec counts every write of an address
together, so the key leaves the route out. Reads are never limited and carry no
RateLimit-* headers. The store is the library's in-memory one: per process, so with
WORKERS=N or several instances each keeps its own count (see the README).
"""

from __future__ import annotations

from quart import Quart, Response, request
from quart_rate_limiter import RateLimit, RateLimiter

from app.settings import parse_rate_limit

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _is_read() -> bool:
    return request.method not in WRITE_METHODS


class WriteRateLimiter(RateLimiter):
    def __init__(self, app: Quart, limit: str) -> None:
        count, period = parse_rate_limit(limit)
        super().__init__(app, default_limits=[RateLimit(count, period)], skip_function=_is_read)

    async def _create_key(self, endpoint: str, rate_limit: RateLimit) -> str:
        # one budget per address for all write routes together
        return await super()._create_key("writes", rate_limit)

    async def _after_request(self, response: Response) -> Response:
        if request.method not in WRITE_METHODS:
            return response
        return await super()._after_request(response)
