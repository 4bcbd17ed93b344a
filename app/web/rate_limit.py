"""WRITE_RATE_LIMIT: writes per client address, with quart-rate-limiter.

The library keys a limit per route; the spec counts every write of an address
together, so the key leaves the route out. Reads are never limited and carry no
RateLimit-* headers. The store is the library's in-memory one: per process, so with
WORKERS=N or several instances each keeps its own count (see the README).

A client is the address of the connection's peer. The library's default believes the
left-most `X-Forwarded-For` address, which any client can invent to escape its budget.
"""

from __future__ import annotations

from quart import Quart, Response, request
from quart_rate_limiter import RateLimit, RateLimiter

from app.settings import parse_rate_limit

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def peer_address() -> str:
    return request.remote_addr or ""


class WriteRateLimiter(RateLimiter):
    def __init__(self, app: Quart, limit: str) -> None:
        count, period = parse_rate_limit(limit)
        super().__init__(default_limits=[RateLimit(count, period)], key_function=peer_address)
        self.init_app(app)

    def init_app(self, app: Quart, enabled: bool = True) -> None:
        # The library's hooks run on every request; reads need none of them, and every
        # request pays for each hook, so ours call the library's for writes only.
        async def before_write() -> None:
            if request.method in WRITE_METHODS:
                await self._before_request()

        async def after_write(response: Response) -> Response:
            if request.method in WRITE_METHODS:
                return await self._after_request(response)
            return response

        app.before_request(before_write)
        app.after_request(after_write)
        app.before_serving(self._before_serving)
        app.after_serving(self._after_serving)
        app.config.setdefault("QUART_RATE_LIMITER_ENABLED", enabled)

    async def _create_key(self, endpoint: str, rate_limit: RateLimit) -> str:
        # one budget per address for all write routes together
        return await super()._create_key("writes", rate_limit)
