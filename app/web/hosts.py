"""The Host header, checked at the edge: one the grammar refuses is a 400 problem.

Quart binds its URL map to the request's Host before any handler runs, and werkzeug
refuses a host it cannot encode (`a..b`, a label over 63 characters) with an exception
no error handler sees: an empty 500, no request id, a traceback in the log. Other hosts
the grammar refuses (`ex ample.com`, `[::1`) it would serve. So the ASGI layer below Quart
checks the header (RFC 9112 §3.2, RFC 3986 §3.2.2: an IP literal, an IPv4 address, or a
name of dot-separated labels of 1 to 63 characters, then an optional port) and, when it
is refused, takes it out of the request and marks the request; the first hook that sees
the request then refuses it, so the answer goes through the request id, the metrics and
the one log line like any other.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart, request, websocket

from app.web.errors import ApiError

REFUSED_HOST = "app.refused_host"
# RFC 3986 reg-name characters, without the dots that separate labels.
LABEL = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]{1,63}")
PORT = re.compile(r"[0-9]{0,5}")


def valid_host(value: str) -> bool:
    host, port = value, ""
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return PORT.fullmatch(port[1:]) is not None
    if value.count(":") == 1:
        host, port = value.split(":")
        if PORT.fullmatch(port) is None:
            return False
    # a fully qualified name may end with its root's dot
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(LABEL.fullmatch(label) for label in labels)


class HostCheck:
    """ASGI middleware: a refused Host is taken out of the request, which is marked."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = _checked(scope)
        await self.app(scope, receive, send)


def _checked(scope: Any) -> Any:
    hosts = [value for name, value in scope["headers"] if name.lower() == b"host"]
    if len(hosts) <= 1 and all(valid_host(value.decode("latin-1")) for value in hosts):
        return scope
    headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"host"]
    return {**scope, "headers": headers, REFUSED_HOST: True}


def register_host_check(app: Quart) -> None:
    app.asgi_app = HostCheck(app.asgi_app)  # type: ignore[method-assign]

    @app.before_request
    async def refuse_host() -> None:
        refuse_marked(request.scope)

    @app.before_websocket
    async def refuse_websocket_host() -> None:
        refuse_marked(websocket.scope)


def refuse_marked(scope: Any) -> None:
    if scope.get(REFUSED_HOST):
        raise ApiError(
            400,
            "The Host header is not a valid host: a name of dot-separated labels of 1"
            " to 63 characters, an IPv4 address or a bracketed IPv6 address, then an"
            " optional port (RFC 9112 section 3.2). Send exactly one.",
        )
