"""Kept-alive connections: a refusal sent before the request body was read must not break
one, and a process that is stopping says so on every answer."""

from __future__ import annotations

import asyncio

from quart import Quart, Response, current_app, request

from app.lifespan import draining

DRAIN_TIMEOUT = 5.0
# Past this, a refused body is not worth reading to the end: the answer says close.
DRAIN_LIMIT = 4 * 1024 * 1024


def register_connection_keeping(app: Quart) -> None:
    """A refusal sent before the body was read must not break the client's connection.

    Quart stops reading the request once the answer is sent, and hypercorn then drops a
    kept-alive connection whose body was still arriving, without a word: the client's
    next request on it fails. So before an error answer goes out, let the rest of the
    body arrive (Quart keeps what fits in MAX_BODY_BYTES and discards the rest); a body
    over DRAIN_LIMIT, of unknown length or too slow gets `Connection: close` instead.
    """

    @app.after_request
    async def let_body_arrive(response: Response) -> Response:
        if response.status_code >= 400 and _has_body() and not await _body_arrived():
            response.headers["Connection"] = "close"
        return response

    # Told to stop, the process closes its kept-alive connections once their requests are
    # answered; a client that was not told would send its next request on one and see it
    # closed unanswered. HTTP/2 has no such header (its server sends GOAWAY).
    @app.after_request
    async def close_when_stopping(response: Response) -> Response:
        if draining(current_app) and request.http_version in ("1.0", "1.1"):
            response.headers["Connection"] = "close"
        return response


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")


async def _body_arrived() -> bool:
    length = request.content_length
    if length is None or length > DRAIN_LIMIT:
        return False
    # Quart's Body marks the end of the body even when it discarded what was over the
    # limit; there is no public way to wait for that, so fall back to closing.
    complete = getattr(request.body, "_complete", None)
    if not isinstance(complete, asyncio.Event):
        return False
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await complete.wait()
    except TimeoutError:
        return False
    return True
