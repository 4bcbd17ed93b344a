"""ETags, If-None-Match and If-Match on our API: 304 with no body, 412 that changes nothing,
the check and the write in one statement."""

from __future__ import annotations

import asyncio

import asyncmy
import httpx
import respx
from quart.testing import QuartClient

from tests.support.factories import insert_user
from tests.support.settings import AUTH, UPSTREAM

POST = {"userId": 1, "id": 7, "title": "seven", "body": "stub"}


async def etag_of(api: QuartClient, user_id: int) -> str:
    response = await api.get(f"/api/v1/users/{user_id}")
    tag: str = response.headers["ETag"]
    return tag


async def test_a_user_answers_304_to_its_current_tag_and_200_after_a_write(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    tag = await etag_of(api, user_id)

    unchanged = await api.get(f"/api/v1/users/{user_id}", headers={"If-None-Match": tag})
    await api.patch(f"/api/v1/users/{user_id}", json={"name": "Ada L."}, headers=AUTH)
    changed = await api.get(f"/api/v1/users/{user_id}", headers={"If-None-Match": tag})

    assert tag.startswith('"')  # strong: not W/"…"
    assert unchanged.status_code == 304
    assert await unchanged.get_data() == b""
    assert unchanged.headers["ETag"] == tag
    assert changed.status_code == 200
    assert changed.headers["ETag"] != tag
    assert (await changed.get_json())["name"] == "Ada L."


async def test_a_write_with_a_stale_tag_is_412_and_changes_nothing(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    first = await etag_of(api, user_id)
    await api.patch(f"/api/v1/users/{user_id}", json={"name": "Ada B."}, headers=AUTH)
    current = await etag_of(api, user_id)

    stale_patch = await api.patch(
        f"/api/v1/users/{user_id}", json={"name": "Lost"}, headers={**AUTH, "If-Match": first}
    )
    stale_delete = await api.delete(f"/api/v1/users/{user_id}", headers={**AUTH, "If-Match": first})
    after = await api.get(f"/api/v1/users/{user_id}")

    assert stale_patch.status_code == 412
    assert stale_patch.content_type == "application/problem+json"
    assert stale_patch.headers["ETag"] == current
    assert stale_delete.status_code == 412
    assert (await after.get_json())["name"] == "Ada B."
    assert after.headers["ETag"] == current


async def test_a_write_with_the_current_tag_applies(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    tag = await etag_of(api, user_id)

    patched = await api.patch(
        f"/api/v1/users/{user_id}", json={"name": "Ada C."}, headers={**AUTH, "If-Match": tag}
    )
    # a list naming the current tag matches too; `*` matches any version
    listed = await api.patch(
        f"/api/v1/users/{user_id}",
        json={"name": "Ada D."},
        headers={**AUTH, "If-Match": f'"0.0", {patched.headers["ETag"]}'},
    )
    starred = await api.patch(
        f"/api/v1/users/{user_id}", json={"name": "Ada E."}, headers={**AUTH, "If-Match": "*"}
    )
    deleted = await api.delete(
        f"/api/v1/users/{user_id}", headers={**AUTH, "If-Match": starred.headers["ETag"]}
    )

    assert [r.status_code for r in (patched, listed, starred, deleted)] == [200, 200, 200, 204]
    assert len({tag, patched.headers["ETag"], listed.headers["ETag"], starred.headers["ETag"]}) == 4
    assert (await api.get(f"/api/v1/users/{user_id}")).status_code == 404


async def test_a_weak_or_foreign_tag_never_matches_if_match(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    other_id = await insert_user(db, name="Bob", email="bob@example.com")
    tag = await etag_of(api, user_id)

    weak = await api.patch(
        f"/api/v1/users/{user_id}", json={"name": "X"}, headers={**AUTH, "If-Match": f"W/{tag}"}
    )
    foreign = await api.patch(
        f"/api/v1/users/{other_id}", json={"name": "X"}, headers={**AUTH, "If-Match": tag}
    )
    missing = await api.patch(
        f"/api/v1/users/{user_id + 1000}", json={"name": "X"}, headers={**AUTH, "If-Match": tag}
    )

    assert (weak.status_code, foreign.status_code, missing.status_code) == (412, 412, 404)


async def test_an_if_match_of_empty_or_odd_tags_is_412_never_500(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    odd = ['"", W/"x"', '""', f'"{user_id}.\u00b2"', f'"{user_id}.', "no quotes at all"]

    patches = [
        await api.patch(
            f"/api/v1/users/{user_id}", json={"name": "X"}, headers={**AUTH, "If-Match": value}
        )
        for value in odd
    ]
    deletes = [
        await api.delete(f"/api/v1/users/{user_id}", headers={**AUTH, "If-Match": value})
        for value in odd
    ]
    after = await api.get(f"/api/v1/users/{user_id}")

    assert [answer.status_code for answer in patches + deletes] == [412] * 2 * len(odd)
    assert (await after.get_json())["name"] == "Ada"


async def test_two_editors_with_the_same_tag_one_wins_the_other_gets_412(
    api: QuartClient, db: asyncmy.Connection
) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")
    tag = await etag_of(api, user_id)

    answers = await asyncio.gather(
        *(
            api.patch(
                f"/api/v1/users/{user_id}",
                json={"name": f"Editor {n}"},
                headers={**AUTH, "If-Match": tag},
            )
            for n in range(8)
        )
    )

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [412] * 7
    winner = next(answer for answer in answers if answer.status_code == 200)
    stored = await api.get(f"/api/v1/users/{user_id}")
    assert (await stored.get_json())["name"] == (await winner.get_json())["name"]


async def test_a_post_answers_304_to_its_tag_with_the_upstreams_freshness(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/7").mock(
        return_value=httpx.Response(200, json=POST, headers={"Cache-Control": "max-age=600"})
    )
    first = await client.get("/api/v1/posts/7")
    tag = first.headers["ETag"]
    again = await client.get("/api/v1/posts/7", headers={"If-None-Match": f'"other", {tag}'})
    weak = await client.get("/api/v1/posts/7", headers={"If-None-Match": f"W/{tag}"})

    assert first.status_code == 200
    assert first.headers["Cache-Control"].startswith("max-age=")
    assert 590 <= int(first.headers["Cache-Control"].removeprefix("max-age=")) <= 600
    assert again.status_code == 304
    assert await again.get_data() == b""
    assert again.headers["ETag"] == tag
    assert "max-age" in again.headers["Cache-Control"]
    assert weak.status_code == 304  # If-None-Match compares weakly (RFC 9110)


async def test_a_post_without_freshness_says_no_cache(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/8").mock(
        return_value=httpx.Response(200, json={**POST, "id": 8})
    )
    response = await client.get("/api/v1/posts/8")

    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["ETag"]
