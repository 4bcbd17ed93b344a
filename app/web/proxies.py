"""TRUSTED_PROXIES: which peers may say who the client is.

Behind a load balancer every connection comes from the balancer, which names the real
client in `X-Forwarded-For` (or `Forwarded`) and the scheme in `X-Forwarded-Proto`. Any
client can send those headers too, so they are believed only when the connection's peer
is a trusted proxy; the client is then the right-most address of the chain that is not a
trusted proxy (each proxy appends the address it saw, so everything left of that is the
client's own say). hypercorn's ProxyFixMiddleware trusts a number of hops, whoever makes
them; this trusts addresses. Unset, the headers are ignored and the peer is the client.
With tracing on, a peer that is not trusted cannot continue its own trace either: its
`traceparent` is dropped before the server span reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(
        self,
        app: ASGIFramework,
        trusted: Iterable[Network],
        *,
        trace_headers: frozenset[bytes] = frozenset(),
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        # tracing on: the headers that continue a caller's trace (`traceparent` and its
        # kin, lower case), heeded only from a trusted peer
        self.trace_headers = trace_headers

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        client = scope.get("client") if scope["type"] in ("http", "websocket") else None
        if client is not None and self._trusts(client[0]):
            scope = self._as_forwarded(scope, client)
        elif self.trace_headers and scope["type"] in ("http", "websocket"):
            scope = without_headers(scope, self.trace_headers)
        await self.app(scope, receive, send)

    def _trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def _as_forwarded(self, scope: Any, peer: tuple[str, int]) -> Any:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            # several header lines of one name are one comma-separated list
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "forwarded" in headers:
            chain, protos = _parse_forwarded(headers["forwarded"])
        else:
            chain = [part.strip() for part in headers.get("x-forwarded-for", "").split(",")]
            protos = [part.strip() for part in headers.get("x-forwarded-proto", "").split(",")]
        client = peer[0]
        for address in reversed([address for address in chain if address]):
            client = address
            if not self._trusts(address):
                break
        scope = {**scope, "client": (client, 0)}
        proto = protos[-1].lower() if protos and protos[-1] else ""
        if proto in ("http", "https"):
            scope["scheme"] = proto
        return scope


def _parse_forwarded(value: str) -> tuple[list[str], list[str]]:
    """The `for` addresses and `proto` values of an RFC 7239 header, in order."""
    addresses, protos = [], []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            raw = raw.strip().strip('"')
            if name.lower() == "for":
                # "[2001:db8::1]:4711" or "192.0.2.60:80": the address without its port
                if raw.startswith("["):
                    raw = raw[1 : raw.find("]")]
                elif raw.count(":") == 1:
                    raw = raw.split(":")[0]
                addresses.append(raw)
            elif name.lower() == "proto":
                protos.append(raw)
    return addresses, protos


def without_headers(scope: Any, names: frozenset[bytes]) -> Any:
    """`scope` without the headers of these (lower-case) names."""
    headers = [(name, value) for name, value in scope["headers"] if name.lower() not in names]
    return {**scope, "headers": headers}
