"""Bearer-token auth for writes: `Authorization: Bearer <API_TOKEN>`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from quart import request
from quart_schema import security_scheme

from app import deps
from app.web.errors import ApiError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# The name the OpenAPI document gives the scheme (declared in create_app).
BEARER = "bearerAuth"


def _refuse(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require_token(func: F) -> F:
    """Refuse the request with 401 unless it carries the configured bearer token.

    With API_TOKEN unset every write is refused: there is no token to match.
    """

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = deps.settings().api_token
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not offered:
            raise _refuse("This request needs an Authorization: Bearer token.")
        # compare_digest: the time taken says nothing about how much of the token matched
        if token is None or not hmac.compare_digest(
            offered.strip().encode(), token.get_secret_value().encode()
        ):
            raise _refuse("The bearer token is not valid.")
        return await func(*args, **kwargs)

    return security_scheme([{BEARER: []}])(wrapper)  # type: ignore[return-value]
