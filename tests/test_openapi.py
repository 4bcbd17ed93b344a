"""The OpenAPI document is valid, complete and honest, checked against the app's own routes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Quart
from quart.testing import QuartClient
from quart_schema.openapi import QUART_SCHEMA_HIDDEN_ATTRIBUTE

from app import create_app
from tests.support.settings import make_settings

HIDDEN_BY_DESIGN = {"/openapi.json", "/docs", "/docs/assets/<path:filename>"}
WRITES = {"post", "patch", "put", "delete"}


@pytest.fixture
async def spec(client: QuartClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = await response.get_json()
    return document


def registered_operations(app: Quart) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, OpenAPI path) of every route the app serves, and the hidden rules."""
    operations, hidden = set(), set()
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], QUART_SCHEMA_HIDDEN_ATTRIBUTE, False):
            hidden.add(rule.rule)
            continue
        path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operations.add((method.lower(), path))
    return operations, hidden


def documented_operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_is_documented_and_nothing_else(app: Quart, spec: dict[str, Any]) -> None:
    served, hidden = registered_operations(app)

    assert set(documented_operations(spec)) == served
    assert hidden == HIDDEN_BY_DESIGN


def test_every_operation_documents_its_answers(spec: dict[str, Any]) -> None:
    for (method, path), operation in documented_operations(spec).items():
        responses = operation["responses"]
        successes = [status for status in responses if int(status) < 400]
        assert successes, f"{method} {path} documents no success"
        for status, response in responses.items():
            if int(status) in (204, 304):
                assert "content" not in response
                continue
            content = response["content"]
            expected = "application/problem+json" if int(status) >= 400 else "application/json"
            if path == "/metrics":
                expected = CONTENT_TYPE_LATEST
            assert list(content) == [expected], f"{method} {path} {status}"
            assert content[expected]["schema"], f"{method} {path} {status} has no schema"


def test_the_documented_failures_are_the_specs(spec: dict[str, Any]) -> None:
    operations = documented_operations(spec)
    statuses = {key: {int(status) for status in op["responses"]} for key, op in operations.items()}

    assert statuses[("get", "/api/v1/posts/{post_id}")] == {200, 304, 404, 502, 504}
    assert statuses[("get", "/api/v1/posts")] == {200, 422}
    assert statuses[("get", "/api/v1/users")] == {200, 422, 503}
    assert statuses[("get", "/api/v1/users/{user_id}")] == {200, 304, 404, 503}
    assert statuses[("post", "/api/v1/users")] == {201, 400, 401, 409, 413, 415, 422, 429, 503}
    assert statuses[("patch", "/api/v1/users/{user_id}")] == {
        200, 400, 401, 404, 409, 412, 413, 415, 422, 429, 503,
    }  # fmt: skip
    assert statuses[("delete", "/api/v1/users/{user_id}")] == {204, 401, 404, 412, 429, 503}
    assert statuses[("get", "/")] == {200, 502, 504}
    assert statuses[("get", "/db")] == {200, 503}
    assert statuses[("get", "/healthz")] == {200}
    assert statuses[("get", "/readyz")] == {200, 503}
    assert statuses[("get", "/metrics")] == {200}


def headers_of(response: dict[str, Any]) -> dict[str, bool]:
    return {name: header["required"] for name, header in response.get("headers", {}).items()}


def test_every_answer_declares_the_headers_it_carries(spec: dict[str, Any]) -> None:
    operations = documented_operations(spec)
    post = operations[("get", "/api/v1/posts/{post_id}")]["responses"]
    get_user = operations[("get", "/api/v1/users/{user_id}")]["responses"]
    create = operations[("post", "/api/v1/users")]["responses"]
    patch = operations[("patch", "/api/v1/users/{user_id}")]["responses"]
    cached = {"ETag": True, "Cache-Control": True, "Age": False, "Cache-Status": False}

    assert headers_of(post["200"]) == headers_of(post["304"]) == {**cached, "X-Request-ID": True}
    assert headers_of(get_user["200"]) == headers_of(get_user["304"])
    assert headers_of(get_user["200"]) == {"ETag": True, "X-Request-ID": True}
    assert headers_of(create["201"]) == {"ETag": True, "Location": True, "X-Request-ID": True}
    assert headers_of(patch["412"]) == {"ETag": True, "X-Request-ID": True}
    assert headers_of(patch["401"]) == {"WWW-Authenticate": True, "X-Request-ID": True}
    assert headers_of(patch["429"]) == {"Retry-After": True, "X-Request-ID": True}
    assert headers_of(patch["503"]) == {"Retry-After": True, "X-Request-ID": True}
    for (method, path), operation in operations.items():
        for status, response in operation["responses"].items():
            assert headers_of(response)["X-Request-ID"], f"{method} {path} {status}"
            assert all(header["description"] for header in response["headers"].values())


def test_the_request_headers_read_are_parameters(spec: dict[str, Any]) -> None:
    def headers(operation: dict[str, Any]) -> list[str]:
        return [p["name"] for p in operation["parameters"] if p["in"] == "header"]

    operations = documented_operations(spec)
    conditional_get = ["If-None-Match", "X-Request-ID"]
    conditional_write = ["If-Match", "X-Request-ID"]

    assert headers(operations[("get", "/api/v1/posts/{post_id}")]) == conditional_get
    assert headers(operations[("get", "/api/v1/users/{user_id}")]) == conditional_get
    assert headers(operations[("patch", "/api/v1/users/{user_id}")]) == conditional_write
    assert headers(operations[("delete", "/api/v1/users/{user_id}")]) == conditional_write
    assert all("X-Request-ID" in headers(operation) for operation in operations.values())


def test_writes_declare_the_bearer_scheme_and_reads_say_they_need_none(
    spec: dict[str, Any],
) -> None:
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    for (method, path), operation in documented_operations(spec).items():
        expected: list[dict[str, list[str]]] = [{"bearerAuth": []}] if method in WRITES else []
        assert operation["security"] == expected, f"{method} {path}"


def test_operations_are_described_in_whole_sentences(spec: dict[str, Any]) -> None:
    operations = documented_operations(spec).values()
    ids = [operation["operationId"] for operation in operations]

    assert len(set(ids)) == len(ids)
    for operation in operations:
        assert operation["summary"][0].isupper(), operation["operationId"]
        assert operation["summary"].endswith("."), operation["operationId"]
        assert operation["description"].strip().endswith("."), operation["operationId"]
    tags = {tag["name"]: tag["description"] for tag in spec["tags"]}
    assert set(tags) == {tag for operation in operations for tag in operation["tags"]}
    assert all(tags.values())
    assert spec["servers"] == [{"url": "/", "description": "this service"}]
    assert spec["info"]["license"] == {"name": "MIT", "identifier": "MIT"}


def test_request_and_query_schemas_are_documented(spec: dict[str, Any]) -> None:
    operations = documented_operations(spec)

    create = operations[("post", "/api/v1/users")]
    assert create["requestBody"]["required"] is True
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"name", "email"}
    assert schema["additionalProperties"] is False

    batch = operations[("get", "/api/v1/posts")]
    query = [p for p in batch["parameters"] if p["in"] == "query"]
    assert [(p["name"], p["required"]) for p in query] == [("ids", True)]
    users = operations[("get", "/api/v1/users")]["parameters"]
    assert {p["name"] for p in users if p["in"] == "query"} == {"limit", "after"}


async def test_no_secret_reaches_the_document(migrated: str) -> None:
    app = create_app(make_settings(migrated, api_token="token-that-must-not-leak"))
    async with app.test_app() as running:
        text = await (await running.test_client().get("/openapi.json")).get_data(as_text=True)

    assert "token-that-must-not-leak" not in text
    password = migrated.split(":")[2].split("@")[0]
    assert password not in text


async def test_the_docs_page_loads_nothing_from_elsewhere(client: QuartClient) -> None:
    page = await (await client.get("/docs")).get_data(as_text=True)

    assert re.findall(r"""(?:src|href)=["']([^"']+)""", page)
    for reference in re.findall(r"""(?:src|href|url)[=:]\s*["']([^"']+)""", page):
        assert reference.startswith("/"), reference
    for asset in re.findall(r"""(?:src|href)=["'](/docs/assets/[^"']+)""", page):
        response = await client.get(asset)
        assert response.status_code == 200, asset
