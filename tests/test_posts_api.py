"""`/api/v1/posts` with respx as the upstream."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx
from quart.testing import QuartClient

from app import create_app
from tests.support.settings import UPSTREAM, make_settings
from tests.support.upstream_mock import mock_answer


def post(post_id: int) -> dict[str, object]:
    return {"userId": 1, "id": post_id, "title": f"title {post_id}", "body": "text"}


async def test_one_post(client: QuartClient, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/7").respond(json=post(7))

    response = await client.get("/api/v1/posts/7")

    assert response.status_code == 200
    assert await response.get_json() == post(7)


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [
        (httpx.Response(404), 404, "not_found"),
        (httpx.Response(500), 502, "upstream_error"),
        (httpx.Response(429), 502, "upstream_error"),
        (httpx.Response(200, text="not json"), 502, "bad_response"),
        (httpx.Response(200, json={"id": 7, "title": "no userId or body"}), 502, "bad_response"),
        (httpx.Response(200, json=[post(7)]), 502, "bad_response"),
        (httpx.ConnectError("refused"), 502, "unreachable"),
        (httpx.ReadError("reset"), 502, "unreachable"),
        (httpx.ReadTimeout("slow"), 504, "timeout"),
    ],
)
async def test_one_post_failures_map_to_statuses(
    client: QuartClient,
    respx_mock: respx.MockRouter,
    upstream: httpx.Response | Exception,
    status: int,
    code: str,
) -> None:
    mock_answer(respx_mock.get(f"{UPSTREAM}/posts/7"), upstream)

    response = await client.get("/api/v1/posts/7")

    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert (body["status"], body["code"]) == (status, code)


@pytest.mark.parametrize("path", ["/api/v1/posts/abc", "/api/v1/posts/-1", "/api/v1/posts/1.5"])
async def test_a_post_id_that_is_not_a_number_is_404(client: QuartClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


async def test_batch_keeps_the_order_asked_and_reports_each_failure(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/3").respond(json=post(3))
    respx_mock.get(f"{UPSTREAM}/posts/1").respond(json=post(1))
    respx_mock.get(f"{UPSTREAM}/posts/404").respond(404)
    respx_mock.get(f"{UPSTREAM}/posts/500").respond(500)
    respx_mock.get(f"{UPSTREAM}/posts/9").respond(text="garbage")

    response = await client.get("/api/v1/posts?ids=3,404,1,500,9")

    assert response.status_code == 200
    body = await response.get_json()
    assert isinstance(body["elapsed_ms"], float)
    assert [item["id"] for item in body["items"]] == [3, 404, 1, 500, 9]
    assert [item["ok"] for item in body["items"]] == [True, False, True, False, False]
    assert body["items"][0]["post"] == post(3)
    assert body["items"][2]["post"] == post(1)
    errors = [item["error"] for item in body["items"] if not item["ok"]]
    assert [(error["code"], error["status"]) for error in errors] == [
        ("not_found", 404),
        ("upstream_error", 502),
        ("bad_response", 502),
    ]
    assert all(error["detail"] for error in errors)


async def test_batch_asks_the_upstream_once_per_distinct_id(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(f"{UPSTREAM}/posts/5").respond(json=post(5))

    body = await (await client.get("/api/v1/posts?ids=5,5,5")).get_json()

    assert [item["id"] for item in body["items"]] == [5, 5, 5]
    assert route.call_count == 1


async def test_batch_of_100_ids_is_allowed(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(url__regex=rf"{UPSTREAM}/posts/\d+").mock(
        side_effect=lambda request: httpx.Response(
            200, json=post(int(request.url.path.rsplit("/")[-1]))
        )
    )
    ids = ",".join(str(n) for n in range(1, 101))

    body = await (await client.get(f"/api/v1/posts?ids={ids}")).get_json()

    assert [item["post"]["id"] for item in body["items"]] == list(range(1, 101))


@pytest.mark.parametrize(
    "query",
    ["", "?ids=", "?ids=0", "?ids=-1", "?ids=abc", "?ids=1,,2", "?ids=1.5", "?ids=1&ids=2",
     "?ids=" + ",".join(["1"] * 101), "?ids=%D9%A1"],
)  # fmt: skip
async def test_bad_ids_are_422_naming_the_parameter(client: QuartClient, query: str) -> None:
    response = await client.get(f"/api/v1/posts{query}")

    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    errors = (await response.get_json())["errors"]
    assert errors
    assert errors[0]["loc"] == ["query", "ids"]


async def test_concurrent_batches_share_the_concurrency_bound(
    migrated: str, respx_mock: respx.MockRouter
) -> None:
    in_flight = 0
    most = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=post(int(request.url.path.rsplit("/")[-1])))

    respx_mock.get(url__regex=rf"{UPSTREAM}/posts/\d+").mock(side_effect=slow)
    app = create_app(
        make_settings(migrated, upstream_max_concurrency=4),
        upstream_transport=httpx.AsyncHTTPTransport(),
    )
    async with app.test_app() as running:
        client = running.test_client()
        first = ",".join(str(n) for n in range(1, 21))
        second = ",".join(str(n) for n in range(21, 41))
        answers = await asyncio.gather(
            client.get(f"/api/v1/posts?ids={first}"), client.get(f"/api/v1/posts?ids={second}")
        )

    assert most == 4
    for answer in answers:
        assert all(item["ok"] for item in (await answer.get_json())["items"])
