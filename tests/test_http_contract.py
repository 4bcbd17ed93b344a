"""What every answer shares: problem+json errors, X-Request-ID, a documented response."""

from __future__ import annotations

import logging

import pytest
from quart import Quart
from quart.testing import QuartClient

from app.web.errors import ApiError
from tests.support.settings import AUTH


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/route", 404),
        ("POST", "/db", 405),
        ("DELETE", "/", 405),
        ("PUT", "/healthz", 405),
    ],
)
async def test_routing_errors_are_problem_json(
    client: QuartClient, method: str, path: str, status: int
) -> None:
    response = await client.open(path, method=method)

    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    assert response.headers["X-Request-ID"]


async def test_405_says_which_methods_are_allowed(client: QuartClient) -> None:
    response = await client.post("/db")

    assert "GET" in response.headers["Allow"]


async def test_an_unexpected_exception_is_a_500_without_a_traceback(app: Quart) -> None:
    @app.get("/_boom")
    async def boom() -> str:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    async with app.test_app() as running:
        response = await running.test_client().get("/_boom")

    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    text = await response.get_data(as_text=True)
    assert "secret internals" not in text
    assert "Traceback" not in text


async def test_api_error_extensions_reach_the_body(app: Quart) -> None:
    @app.get("/_teapot")
    async def teapot() -> str:
        raise ApiError(
            418,
            "short and stout",
            errors=[{"loc": ["spout"], "msg": "missing"}],
            headers={"X-Why": "tea"},
        )

    async with app.test_app() as running:
        response = await running.test_client().get("/_teapot")

    assert response.status_code == 418
    assert response.headers["X-Why"] == "tea"
    assert await response.get_json() == {
        "type": "about:blank",
        "title": "I'm a teapot",  # werkzeug's phrase, as for every problem
        "status": 418,
        "detail": "short and stout",
        "errors": [{"loc": ["spout"], "msg": "missing"}],
    }


@pytest.mark.parametrize("offered", ["abc-123", "A.b_c:d-1", "x" * 128])
async def test_a_valid_client_request_id_is_echoed(client: QuartClient, offered: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": offered})

    assert response.headers["X-Request-ID"] == offered


@pytest.mark.parametrize(
    "offered", ["", "x" * 129, "has space", "semi;colon", "new\\nline", "ünïcode"]
)
async def test_an_invalid_request_id_is_replaced(client: QuartClient, offered: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": offered})

    issued = response.headers["X-Request-ID"]
    assert issued
    assert issued != offered


async def test_each_request_gets_its_own_id(client: QuartClient) -> None:
    first = await client.get("/healthz")
    second = await client.get("/nope")

    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_the_request_log_line_carries_the_request_id(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")

    response = await client.get("/nope", headers={"X-Request-ID": "trace-me-42"})

    lines = [record for record in caplog.records if record.name == "app.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line.request_id == "trace-me-42" == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert line.status == 404  # type: ignore[attr-defined]


async def test_problem_titles_are_the_same_on_every_python(api: QuartClient) -> None:
    # http.HTTPStatus calls 413 and 422 otherwise from Python 3.13 on; clients and the
    # committed OpenAPI document must not see a title change with the interpreter.
    invalid = await api.get("/api/v1/users", query_string={"limit": "0"})
    too_large = await api.post(
        "/api/v1/users",
        data="x" * 4096,
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert (await invalid.get_json())["title"] == "Unprocessable Entity"
    assert (await too_large.get_json())["title"] == "Request Entity Too Large"
