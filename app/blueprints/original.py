"""The blog post's two routes, kept for existing clients: `/` and `/db`."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from quart import Blueprint, Response
from quart_schema import document_response, tag_blueprint

from app import deps
from app.data.upstream import UpstreamError
from app.data.users import User, select_users
from app.models import UpstreamProblem
from app.web.errors import ApiError
from app.web.openapi import problems
from app.web.serialization import json_response

DB_ROUTE_LIMIT = 1000

blueprint = Blueprint("original", __name__)
tag_blueprint(blueprint, ["original"])

# The blog's `/` answers whatever JSON each upstream gives.
upstream_bodies = TypeAdapter(list[Any])
users_json = TypeAdapter(list[User])


@blueprint.get("/")
@document_response(list[Any], 200)
@document_response(UpstreamProblem, 502)
@document_response(UpstreamProblem, 504)
async def original_index() -> Response:
    """Fetch every URL in UPSTREAM_URLS at once, the blog post's way.

    The answer is their JSON bodies, in order. If any call fails, the answer is 502 (504
    when one timed out), listing each failure.
    """
    urls = [str(url) for url in deps.settings().upstream_urls]
    results = await deps.upstream().get_all(urls)
    failures = [result for result in results if isinstance(result, UpstreamError)]
    if failures:
        timed_out = any(failure.code == "timeout" for failure in failures)
        raise ApiError(
            504 if timed_out else 502,
            f"{len(failures)} of {len(urls)} upstream calls failed",
            errors=[{"url": f.url, "code": f.code, "detail": f.detail} for f in failures],
        )
    return json_response(upstream_bodies, results)


@blueprint.get("/db")
@document_response(list[User], 200)
@problems(503)
async def original_db() -> Response:
    """List the users, the blog post's way.

    At most 1,000 users, ordered by id, as a bare array; GET /api/v1/users pages through
    them all.
    """
    async with deps.database().connection() as connection:
        rows = await select_users(connection, limit=DB_ROUTE_LIMIT)
    # Up to 1,000 rows: serialised straight from the rows (types checked as they are
    # written) rather than built into User models first; the JSON is the same.
    return json_response(users_json, rows)
