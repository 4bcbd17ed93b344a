"""The upstream's posts: the `Post` type and the two ways the routes ask for posts.

The counterpart of `app.data.users`, over HTTP instead of SQL: the addresses are built
here, from the configured base URL and an integer only, and each answer is checked to
be a post. How an answer is found (kept, coalesced, fetched, hedged, stale) is
`app.data.upstream`'s business.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from app.data.upstream import Fetched, Upstream, UpstreamError, settled


class Post(BaseModel):
    """A post, as the upstream gives it."""

    model_config = ConfigDict(frozen=True)

    userId: int
    id: int
    title: str
    body: str


Result = Fetched[Post] | UpstreamError  # what one post id comes back as in a batch


def post_url(upstream: Upstream, post_id: int) -> str:
    # Built only from configuration and an integer: no client picks the address.
    return f"{upstream.base_url}/posts/{int(post_id)}"


async def get_post(upstream: Upstream, post_id: int) -> Fetched[Post]:
    url = post_url(upstream, post_id)
    return _as_post(url, await upstream.get_json(url))


async def get_posts(upstream: Upstream, post_ids: list[int]) -> dict[int, Result]:
    """Each distinct id fetched once, all at once, within the concurrency bound."""
    unique = list(dict.fromkeys(post_ids))
    results = _kept_posts(upstream, unique)
    missing = [post_id for post_id in unique if post_id not in results]
    fetched = await asyncio.gather(*(settled(get_post(upstream, n)) for n in missing))
    results.update(zip(missing, fetched, strict=True))
    return {post_id: results[post_id] for post_id in unique}


def _kept_posts(upstream: Upstream, post_ids: list[int]) -> dict[int, Result]:
    # what the cache holds fresh is answered at once, without a task per post
    kept: dict[int, Result] = {}
    if not upstream.keeps_answers:
        return kept
    for post_id in post_ids:
        url = post_url(upstream, post_id)
        if (fetched := upstream.kept(url)) is not None:
            kept[post_id] = _post_or_error(url, fetched)
    return kept


def _as_post(url: str, fetched: Fetched[Any]) -> Fetched[Post]:
    try:
        post = Post.model_validate(fetched.body)
    except ValidationError:
        raise UpstreamError(url, "bad_response", "the upstream's answer is not a post") from None
    return Fetched(post, *fetched[1:])


def _post_or_error(url: str, fetched: Fetched[Any]) -> Result:
    try:
        return _as_post(url, fetched)
    except UpstreamError as error:
        return error
