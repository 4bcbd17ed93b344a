"""Entity tags and conditional requests on our API (RFC 9110 §13).

A GET answer carries a strong `ETag`; a client that sends it back in `If-None-Match` gets
304 with no body. `If-Match` on writes is decided in the database (app.data.users), and
`precondition` reads it here. The decorators document both in the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel
from quart import Response, request

from app.web.openapi import F, no_body, problems, request_headers

BODILESS_DROPS = ("Content-Type", "Content-Length")


def honours_if_none_match(headers: type[BaseModel]) -> Callable[[F], F]:
    """The route answers 304 through `conditional`, with these headers of its 200."""

    def decorator(func: F) -> F:
        return request_headers("If-None-Match")(no_body(304, headers)(func))

    return decorator


def honours_if_match(func: F) -> F:
    """The write reads If-Match through `precondition`: 412 when the version changed."""
    return request_headers("If-Match")(problems(412)(func))


def empty_response(status: int) -> Response:
    """An answer with no body, so neither Content-Type nor Content-Length (204, 304)."""
    response = Response(b"", status=status)
    for name in BODILESS_DROPS:
        response.headers.pop(name, None)
    return response


def conditional(response: Response) -> Response:
    """`response`, or 304 without a body if the client already has its ETag.

    The 304 keeps the other headers a 200 would have (ETag, Cache-Control, Age).
    """
    tag, _ = response.get_etag()
    if tag is None or not request.if_none_match.contains_weak(tag):  # RFC 9110: weakly
        return response
    not_modified = empty_response(304)
    for name, value in response.headers.items():
        if name not in BODILESS_DROPS:
            not_modified.headers[name] = value
    return not_modified


def precondition() -> set[str] | None:
    """The strong tags of the request's If-Match; None when it has none or `*`.

    `*` matches any current version, so it is no condition on a resource that exists
    (and one that does not is a 404 before any precondition, RFC 9110 §13.2.1).
    """
    if "If-Match" not in request.headers or request.if_match.star_tag:
        return None
    # werkzeug gives None for an empty tag (`""`); it names no version
    return {tag for tag in request.if_match.as_set() if tag}
