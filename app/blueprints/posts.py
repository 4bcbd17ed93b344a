"""`/api/v1/posts`: the blog's fan-out, done right: partial failure, bounded, timed."""

from __future__ import annotations

import time

from pydantic import TypeAdapter
from quart import Blueprint, Response
from quart_schema import (
    document_response,
    tag_blueprint,
    validate_querystring,
)

from app import deps
from app.data import posts
from app.data.posts import Post
from app.data.upstream import Fetched, UpstreamError
from app.models import (
    UPSTREAM_STATUS,
    PostBatch,
    PostError,
    PostFailed,
    PostFetched,
    PostHeaders,
    PostsQuery,
)
from app.web.conditional import conditional, honours_if_none_match
from app.web.openapi import problems
from app.web.serialization import json_response

blueprint = Blueprint("posts", __name__, url_prefix="/api/v1")
tag_blueprint(blueprint, ["posts"])

post_json = TypeAdapter(Post)
batch_json = TypeAdapter(PostBatch)
CACHE_NAME = "quart-async-demo"  # how this service names itself in Cache-Status


def cache_headers(response: Response, fetched: Fetched[Post]) -> None:
    """How long the post may be reused, and where it came from (RFC 9111, RFC 9211)."""
    if fetched.fresh_for > 0:
        response.cache_control.max_age = fetched.fresh_for
    else:
        response.cache_control.no_cache = True
    if fetched.cache is None:
        return
    response.headers["Age"] = str(fetched.age)
    response.headers["Cache-Status"] = (
        CACHE_NAME
        + {
            "hit": f"; hit; ttl={fetched.fresh_for}",
            "revalidated": f"; fwd=stale; fwd-status=304; ttl={fetched.fresh_for}",
            "miss": "; fwd=miss",
            "stale": '; hit; fwd=stale; detail="stale-if-error"',
            "stale_while_revalidate": '; hit; fwd=stale; detail="stale-while-revalidate"',
        }[fetched.cache]
    )


@blueprint.get("/posts/<int:post_id>")
@document_response(Post, 200, PostHeaders)
@honours_if_none_match(PostHeaders)
@problems(404, 502, 504)
async def get_post(post_id: int) -> Response:
    """Get one post from the upstream.

    The upstream's 404 is a 404; its timeout a 504; any other failure (refused, reset,
    5xx, not JSON, not a post) a 502. The problem's `code` says which. The answer has a
    strong ETag (send it in If-None-Match for a 304) and may be reused for as long as
    the upstream's own answer stays fresh (Cache-Control).
    """
    fetched = await posts.get_post(deps.upstream(), post_id)
    response = json_response(post_json, fetched.body)
    cache_headers(response, fetched)
    await response.add_etag()  # Quart's: a hash of the body, so equal posts, equal tags
    return conditional(response)


@blueprint.get("/posts")
@validate_querystring(PostsQuery)
@document_response(PostBatch, 200)
@problems(422)
async def get_posts(query_args: PostsQuery) -> Response:
    """Get several posts at once.

    The answer is 200 even when some fail: each item is the post or the reason it failed,
    in the order asked. Every id is fetched at the same time, with at most
    UPSTREAM_MAX_CONCURRENCY calls in flight across the whole process.
    """
    post_ids = query_args.id_list
    started = time.perf_counter()
    results = await posts.get_posts(deps.upstream(), post_ids)
    elapsed_ms = (time.perf_counter() - started) * 1000

    items: list[PostFetched | PostFailed] = []
    for post_id in post_ids:
        result = results[post_id]
        if isinstance(result, UpstreamError):
            status = UPSTREAM_STATUS[result.code]
            error = PostError(code=result.code, status=status, detail=result.detail)
            items.append(PostFailed(id=post_id, ok=False, error=error))
        else:
            items.append(PostFetched(id=post_id, ok=True, post=result.body, stale=result.stale))
    # built from typed models: serialised straight to JSON, not validated again
    return json_response(batch_json, PostBatch(items=items, elapsed_ms=round(elapsed_ms, 3)))
