"""Entity tags and conditional requests on our API (RFC 9110 §13).

A GET answer carries a strong `ETag`; a client that sends it back in `If-None-Match` gets
304 with no body. `If-Match` on writes is decided in the database (app.data.users), and
`precondition` reads it here.
"""

from __future__ import annotations

from quart import Response, request

NOT_MODIFIED_DROPS = ("Content-Type", "Content-Length")


def conditional(response: Response) -> Response:
    """`response`, or 304 without a body if the client already has its ETag.

    The 304 keeps the other headers a 200 would have (ETag, Cache-Control, Age).
    """
    tag, _ = response.get_etag()
    if tag is None or not request.if_none_match.contains_weak(tag):  # RFC 9110: weakly
        return response
    not_modified = Response(b"", status=304)
    for name, value in response.headers.items():
        if name not in NOT_MODIFIED_DROPS:
            not_modified.headers[name] = value
    not_modified.headers.pop("Content-Length", None)  # the empty body's, set by Response
    return not_modified


def precondition() -> set[str] | None:
    """The strong tags of the request's If-Match; None when it has none or `*`.

    `*` matches any current version, so it is no condition on a resource that exists
    (and one that does not is a 404 before any precondition, RFC 9110 §13.2.1).
    """
    if "If-Match" not in request.headers or request.if_match.star_tag:
        return None
    return request.if_match.as_set()
