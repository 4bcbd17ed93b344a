"""JSON request bodies: the checks that come before schema validation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from quart import Quart, Response, request
from werkzeug.exceptions import BadRequest, HTTPException

from app.problems import ApiError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def require_json(func: F) -> F:
    """415 unless the body is declared `application/json`; 400 unless it parses as JSON."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.mimetype != "application/json":
            raise ApiError(415, "Send the body as application/json.")
        try:
            await request.get_json()  # cached for validate_request
        except BadRequest:
            raise ApiError(400, "The body is not valid JSON.") from None
        return await func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


DRAIN_TIMEOUT = 5.0


def register_connection_keeping(app: Quart) -> None:
    """A refusal sent before the body was read must not break the client's connection.

    hypercorn drops a kept-alive connection whose request body was still arriving when
    the answer went out, without saying so, and the client's next request on it fails.
    So before an error answer goes out, read the rest of a body of allowed size (it is
    at most MAX_BODY_BYTES); for a larger or unbounded one, say `Connection: close`.
    """

    @app.after_request
    async def finish_reading_body(response: Response) -> Response:
        if response.status_code < 400 or not _has_body():
            return response
        length = request.content_length
        limit = app.config["MAX_CONTENT_LENGTH"]
        if length is not None and length <= limit:
            try:
                await asyncio.wait_for(request.get_data(), DRAIN_TIMEOUT)
                return response
            except (TimeoutError, HTTPException):
                pass
        response.headers["Connection"] = "close"
        return response


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
