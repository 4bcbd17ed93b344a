"""`/` and `/db` through the app, with respx as the upstream and the real MariaDB."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncmy
import httpx
import respx
from quart.testing import QuartClient

from app import create_app
from tests.support.factories import insert_user, insert_users
from tests.support.settings import UPSTREAM, make_settings
from tools.ports import free_port

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


async def test_index_answers_every_upstream_body_in_order(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    async def later(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"id": 1, "title": "first"})

    respx_mock.get(f"{UPSTREAM}/posts/1").mock(side_effect=later)
    respx_mock.get(f"{UPSTREAM}/posts/2").respond(json={"id": 2, "title": "second"})

    response = await client.get("/")

    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert await response.get_json() == [{"id": 1, "title": "first"}, {"id": 2, "title": "second"}]


async def test_index_names_each_failed_url_in_a_502(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/1").respond(json={"id": 1})
    respx_mock.get(f"{UPSTREAM}/posts/2").respond(500)

    response = await client.get("/")

    assert response.status_code == 502
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["status"] == 502
    assert body["title"] == "Bad Gateway"
    assert body["errors"] == [
        {
            "url": f"{UPSTREAM}/posts/2",
            "code": "upstream_error",
            "detail": "the upstream answered 500",
        }
    ]


async def test_index_is_a_504_when_any_call_timed_out(
    settings: object, migrated: str, respx_mock: respx.MockRouter
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json={})

    respx_mock.get(f"{UPSTREAM}/posts/1").mock(side_effect=hang)
    respx_mock.get(f"{UPSTREAM}/posts/2").respond(404)
    app = create_app(
        make_settings(migrated, upstream_timeout=0.2), upstream_transport=httpx.AsyncHTTPTransport()
    )

    async with app.test_app() as running:
        response = await running.test_client().get("/")

    assert response.status_code == 504
    codes = {
        error["url"].rsplit("/", 1)[1]: error["code"]
        for error in (await response.get_json())["errors"]
    }
    assert codes == {"1": "timeout", "2": "not_found"}


async def test_index_fetches_the_configured_urls(
    migrated: str, respx_mock: respx.MockRouter
) -> None:
    urls = [f"{UPSTREAM}/a", f"{UPSTREAM}/b", f"{UPSTREAM}/c"]
    for index, url in enumerate(urls):
        respx_mock.get(url).respond(json=index)
    app = create_app(
        make_settings(migrated, upstream_urls=",".join(urls)),
        upstream_transport=httpx.AsyncHTTPTransport(),
    )

    async with app.test_app() as running:
        response = await running.test_client().get("/")

    assert await response.get_json() == [0, 1, 2]


async def test_db_answers_the_users_ordered_by_id(
    client: QuartClient, db: asyncmy.Connection
) -> None:
    second = await insert_user(db, name="Zed", email="zed@example.com")
    first_id = second - 1  # nothing to do with names: order is by id
    third = await insert_user(db, name="Amy", email="amy@example.com")

    response = await client.get("/db")

    assert response.status_code == 200
    users = await response.get_json()
    assert [user["id"] for user in users] == sorted([second, third])
    assert first_id not in [user["id"] for user in users]
    assert users[0]["name"] == "Zed"
    assert set(users[0]) == {"id", "name", "email", "created_at", "updated_at"}


async def test_db_times_are_rfc3339_utc(client: QuartClient, db: asyncmy.Connection) -> None:
    await insert_user(db)

    (user,) = await (await client.get("/db")).get_json()

    assert RFC3339_UTC.match(user["created_at"]), user["created_at"]
    created = datetime.fromisoformat(user["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)


async def test_db_answers_at_most_1000_users(client: QuartClient, db: asyncmy.Connection) -> None:
    await insert_users(db, 1001)

    users = await (await client.get("/db")).get_json()

    assert len(users) == 1000
    ids = [user["id"] for user in users]
    assert ids == sorted(ids)


async def test_db_with_no_users_is_an_empty_list(
    client: QuartClient, db: asyncmy.Connection
) -> None:
    response = await client.get("/db")

    assert response.status_code == 200
    assert await response.get_json() == []


async def test_db_down_is_a_quick_503_while_healthz_stays_200() -> None:
    nothing_listens = f"mysql://app:secret-pw@127.0.0.1:{free_port()}/app"
    app = create_app(make_settings(nothing_listens))

    async with app.test_app() as running, asyncio.timeout(5):
        client = running.test_client()
        db_response = await client.get("/db")
        health = await client.get("/healthz")

    assert db_response.status_code == 503
    assert db_response.content_type == "application/problem+json"
    body = await db_response.get_data(as_text=True)
    assert "secret-pw" not in body
    assert health.status_code == 200
