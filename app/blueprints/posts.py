"""`/api/v1/posts`: the blog's fan-out, done right: partial failure, bounded, timed."""

from __future__ import annotations

import time

from quart import Blueprint
from quart_schema import tag_blueprint, validate_querystring, validate_response

from app import deps
from app.data.upstream import Post, UpstreamError
from app.models import UPSTREAM_STATUS, PostBatch, PostError, PostFailed, PostFetched, PostsQuery
from app.web.openapi import problems

blueprint = Blueprint("posts", __name__, url_prefix="/api/v1")
tag_blueprint(blueprint, ["posts"])


@blueprint.get("/posts/<int:post_id>")
@validate_response(Post, 200)
@problems(404, 502, 504)
async def get_post(post_id: int) -> Post:
    """One post from the upstream.

    The upstream's 404 is a 404; its timeout a 504; any other failure (refused, reset,
    5xx, not JSON, not a post) a 502. The problem's `code` says which.
    """
    return await deps.upstream().get_post(post_id)


@blueprint.get("/posts")
@validate_querystring(PostsQuery)
@validate_response(PostBatch, 200)
@problems(422)
async def get_posts(query_args: PostsQuery) -> PostBatch:
    """Several posts at once; 200 even when some fail.

    Every id is fetched at the same time, with at most UPSTREAM_MAX_CONCURRENCY calls in
    flight across the whole process. Each item is the post or the reason it failed.
    """
    post_ids = query_args.id_list
    started = time.perf_counter()
    results = await deps.upstream().get_posts(post_ids)
    elapsed_ms = (time.perf_counter() - started) * 1000

    items: list[PostFetched | PostFailed] = []
    for post_id in post_ids:
        result = results[post_id]
        if isinstance(result, UpstreamError):
            status = UPSTREAM_STATUS[result.code]
            error = PostError(code=result.code, status=status, detail=result.detail)
            items.append(PostFailed(id=post_id, error=error))
        else:
            items.append(PostFetched(id=post_id, post=result))
    return PostBatch(items=items, elapsed_ms=round(elapsed_ms, 3))
