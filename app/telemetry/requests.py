"""What every request goes through: its id, its log line, its metrics, the loop guard.

One before_request and one after_request hook do it all (and their twins for a WebSocket
upgrade): each Quart hook and each look-up of `request` costs microseconds, and every
request pays them.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from typing import Any, NamedTuple

from quart import Quart, Response, request, websocket
from quart.typing import ResponseTypes
from quart.wrappers import BaseRequestWebsocket

from app.telemetry import tracing
from app.telemetry.logs import request_id_var
from app.telemetry.loop_monitor import LoopMonitor
from app.telemetry.metrics import REQUEST_SECONDS, REQUESTS, UNMATCHED

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Any token is a valid method name; a label per name would let any client add series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})

access_log = logging.getLogger("app.access")


# prometheus-client's labels() takes a lock and builds a key on every call; the label
# sets here are few and bounded (route templates, known methods, statuses), so keep each
# child once found.
@functools.cache
def counter(method: str, route: str, status: int) -> Any:
    return REQUESTS.labels(method, route, str(status))


@functools.cache
def histogram(method: str, route: str) -> Any:
    return REQUEST_SECONDS.labels(method, route)


class Observed(NamedTuple):
    """What the start of a request leaves on it for its end."""

    request_id: str
    route: str
    started: float | None


def new_request_id() -> str:
    # A correlation id, not a secret: the non-cryptographic generator is enough, and
    # unlike uuid4 or secrets it costs no system call per request.
    return f"{random.getrandbits(128):032x}"


def observe_unparsed(status: int, request_id: str) -> None:
    """A request the server refused before the app saw it: counted and logged like any."""
    counter("other", UNMATCHED, status).inc()
    access_log.info("request", extra={"request_id": request_id, "status": status})


def register_observability(app: Quart, monitor: LoopMonitor) -> None:
    # A WebSocket upgrade takes Quart's websocket path, with hooks of its own: the service
    # has no WebSocket routes, but its refusal is observed like any answer.
    @app.before_request
    async def start() -> None:
        # the request itself, not its proxy: each look-up through the proxy costs
        begin(request._get_current_object(), monitor)  # type: ignore[attr-defined]

    @app.before_websocket
    async def start_websocket() -> None:
        begin(websocket._get_current_object(), monitor)  # type: ignore[attr-defined]

    @app.after_request
    async def finish(response: Response) -> Response:
        return end(request._get_current_object(), response)  # type: ignore[attr-defined]

    @app.after_websocket
    async def finish_websocket(response: ResponseTypes | None) -> ResponseTypes | None:
        # a refused upgrade has an answer (an accepted one would have none)
        if isinstance(response, Response):
            end(websocket._get_current_object(), response)  # type: ignore[attr-defined]
        return response

    @app.teardown_request
    async def leave(exc: BaseException | None) -> None:
        leaving(request._get_current_object(), monitor)  # type: ignore[attr-defined]

    @app.teardown_websocket
    async def leave_websocket(exc: BaseException | None) -> None:
        leaving(websocket._get_current_object(), monitor)  # type: ignore[attr-defined]


def begin(current: BaseRequestWebsocket, monitor: LoopMonitor) -> None:
    offered = current.headers.get(REQUEST_ID_HEADER)
    if offered is None or not VALID_REQUEST_ID.fullmatch(offered):
        offered = new_request_id()
    request_id_var.set(offered)
    route = current.url_rule.rule if current.url_rule is not None else UNMATCHED
    current.observed = Observed(offered, route, time.perf_counter())  # type: ignore[attr-defined]
    monitor.enter(route)
    if tracing.active is not None and route != UNMATCHED:
        tracing.active.name_server_span(current.method, route)


def end(current: BaseRequestWebsocket, response: Response) -> Response:
    observed = getattr(current, "observed", None)
    if observed is None:  # failed before `begin` ran
        observed = Observed(new_request_id(), UNMATCHED, None)
    request_id, route, started = observed
    response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    method = current.method if current.method in METHODS else "other"
    counter(method, route, status).inc()
    duration = time.perf_counter() - started if started is not None else None
    if duration is not None:
        histogram(method, route).observe(duration)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": current.method,
                "path": current.path,
                "route": route if route != UNMATCHED else None,
                "status": status,
                "duration_ms": round(duration * 1000, 3) if duration is not None else None,
                "client": current.remote_addr,
            },
        )
    return response


def leaving(current: BaseRequestWebsocket, monitor: LoopMonitor) -> None:
    observed = getattr(current, "observed", None)
    if observed is not None:
        monitor.leave(observed.route)
