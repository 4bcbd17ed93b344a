"""One error type, `ApiError`, and the one place that turns every error into problem+json.

RFC 9457: every 4xx/5xx answer is `application/problem+json` with `type`, `title`,
`status` and `detail`, plus members of its own (`errors`). No answer carries a
traceback: unexpected exceptions are logged with theirs and answered with a plain 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from quart import Quart, Response
from quart_schema import RequestSchemaValidationError
from quart_schema.validation import QuerystringValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import WebsocketMismatch

from app.data.database import DatabaseUnavailable
from app.data.upstream import UpstreamError
from app.data.users import EmailTaken
from app.models import UPSTREAM_STATUS

PROBLEM_JSON = "application/problem+json"
NO_WEBSOCKETS = (
    "This service has no WebSocket endpoints: send the request without `Upgrade: websocket`."
)


log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised by a route or what it calls on the web side.

    `extensions` become members of the problem (`errors`, `code`).
    """

    def __init__(
        self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extensions = extensions


def problem_body(status: int, detail: str, *, title: str | None = None, **extensions: Any) -> bytes:
    """The problem+json body of an answer of `status`."""
    body = {
        "type": "about:blank",  # the status says it all (RFC 9457, 4.2.1)
        # werkzeug's phrase, as Quart's own errors have: the same on every Python
        # (http.HTTPStatus renamed 413 and 422 in 3.13)
        "title": title or HTTP_STATUS_CODES[status],
        "status": status,
        "detail": detail,
        **extensions,
    }
    return to_json(body)


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body = problem_body(status, detail, title=title, **extensions)
    response = Response(body, status=status, content_type=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def field_errors(error: Exception | None, where: str) -> list[dict[str, Any]]:
    """`{loc, msg}` for each bad field; the offending values are never echoed back."""
    if isinstance(error, ValidationError):
        return [
            {"loc": [where, *item["loc"]], "msg": item["msg"].removeprefix("Value error, ")}
            for item in error.errors(include_url=False, include_input=False)
        ]
    return [{"loc": [where], "msg": str(error) if error else "invalid"}]


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return problem_response(
            error.status, error.detail, headers=error.headers, **error.extensions
        )

    @app.errorhandler(DatabaseUnavailable)
    async def database_unavailable(error: DatabaseUnavailable) -> Response:
        return problem_response(503, error.detail, headers={"Retry-After": "1"})

    @app.errorhandler(EmailTaken)
    async def email_taken(error: EmailTaken) -> Response:
        return problem_response(409, "Another user has this email address (emails ignore case).")

    @app.errorhandler(UpstreamError)
    async def upstream_failed(error: UpstreamError) -> Response:
        return problem_response(UPSTREAM_STATUS[error.code], error.detail, code=error.code)

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid_request(error: RequestSchemaValidationError) -> Response:
        where = "query" if isinstance(error, QuerystringValidationError) else "body"
        return problem_response(
            422,
            "The request is not valid: see errors.",
            errors=field_errors(error.validation_error, where),
        )

    @app.errorhandler(HTTPException)
    async def http_exception(error: HTTPException) -> Response:
        # Routing (404, 405 with its Allow header), 413 and the like, raised by Quart itself.
        status = error.code or 500
        if isinstance(error, WebsocketMismatch):
            return problem_response(400, NO_WEBSOCKETS)
        headers = {
            name: value
            for name, value in error.get_headers()
            if name.lower() not in {"content-type", "content-length"}
        }
        return problem_response(
            status,
            error.description or HTTPStatus(status).description,
            title=error.name,
            headers=headers,
        )

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled exception", exc_info=error)
        return problem_response(500, "The server met an unexpected error; it has been logged.")
