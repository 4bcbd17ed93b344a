"""What every write checks before its route runs, in one place and in one order.

`@json_write(Model)` is a write with a JSON body: the bearer token (401), the client's write
budget (429), the content type (415), the body's size (413, Quart's MAX_CONTENT_LENGTH
while reading it), JSON (400), then the schema (422); `@token_required` is a write without
a body (the token and the budget). Each documents in OpenAPI the answers its checks can
give and the bearer scheme.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from pydantic import BaseModel
from quart import request
from quart_schema import security_scheme, validate_request
from werkzeug.exceptions import BadRequest

from app import deps
from app.web.errors import ApiError
from app.web.openapi import problems
from app.web.rate_limit import spend_write_budget

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# The name the OpenAPI document gives the scheme (declared in create_app).
BEARER = "bearerAuth"


def check_token() -> None:
    """401 unless the request carries API_TOKEN as a bearer token (none matches when unset)."""
    token = deps.settings().api_token
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not offered:
        raise _refuse("This request needs an Authorization: Bearer token.")
    # compare_digest: the time taken says nothing about how much of the token matched
    if token is None or not hmac.compare_digest(
        offered.strip().encode(), token.get_secret_value().encode()
    ):
        raise _refuse("The bearer token is not valid.")


def _refuse(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def read_json() -> None:
    """415 unless the body is declared JSON; 413 past MAX_BODY_BYTES; 400 unless it parses."""
    if request.mimetype != "application/json":
        raise ApiError(415, "Send the body as application/json.")
    try:
        await request.get_json()  # cached for validate_request
    except (BadRequest, UnicodeDecodeError):
        raise ApiError(
            400, "The body is not valid JSON (UTF-8, nested at most 200 levels deep)."
        ) from None


async def admit_write() -> None:
    """The token first (401), then the client's budget (429): a write without a valid token
    spends none of it."""
    check_token()
    await spend_write_budget()


def token_required(func: F) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await admit_write()
        return await func(*args, **kwargs)

    return problems(401, 429)(security_scheme([{BEARER: []}])(wrapper))  # type: ignore[return-value]


def json_write(model: type[BaseModel]) -> Callable[[F], F]:
    def decorator(func: F) -> F:
        validated = validate_request(model)(func)

        @wraps(validated)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            await admit_write()
            await read_json()
            return await validated(*args, **kwargs)

        documented = security_scheme([{BEARER: []}])(wrapper)
        return problems(400, 401, 413, 415, 422, 429)(documented)  # type: ignore[return-value]

    return decorator
