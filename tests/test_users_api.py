"""`/api/v1/users` against the real MariaDB."""

from __future__ import annotations

from typing import Any

import asyncmy
import pytest
from quart.testing import QuartClient

from app import create_app
from tests.support.factories import insert_user, insert_users
from tests.support.settings import AUTH, TOKEN, make_settings

# 255 characters, each part within its own limit
TOO_LONG_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"


async def create(api: QuartClient, **body: Any) -> Any:
    response = await api.post("/api/v1/users", json=body, headers=AUTH)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await response.get_json()


async def errors_of(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    errors: list[dict[str, Any]] = (await response.get_json())["errors"]
    return errors


# --- reading --------------------------------------------------------------------------


async def test_pages_walk_every_user_once(api: QuartClient, db: asyncmy.Connection) -> None:
    await insert_users(db, 5)

    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        body = await (await api.get(f"/api/v1/users?limit=2&after={after}")).get_json()
        seen += [user["id"] for user in body["items"]]
        pages += 1
        if body["next_after"] is None:
            break
        after = body["next_after"]

    assert len(seen) == 5
    assert seen == sorted(seen)
    assert pages == 3


async def test_a_full_last_page_says_no_more(api: QuartClient, db: asyncmy.Connection) -> None:
    await insert_users(db, 2)

    body = await (await api.get("/api/v1/users?limit=2")).get_json()

    assert len(body["items"]) == 2
    assert body["next_after"] is None


async def test_the_default_page_is_50(api: QuartClient, db: asyncmy.Connection) -> None:
    await insert_users(db, 51)

    body = await (await api.get("/api/v1/users")).get_json()

    assert len(body["items"]) == 50
    assert body["next_after"] == body["items"][-1]["id"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"), ("after=-1", "after"),
     ("after=x", "after")],
)  # fmt: skip
async def test_bad_paging_is_422(api: QuartClient, query: str, field: str) -> None:
    errors = await errors_of(await api.get(f"/api/v1/users?{query}"))

    assert errors[0]["loc"] == ["query", field]


async def test_one_user_or_404(api: QuartClient, db: asyncmy.Connection) -> None:
    user_id = await insert_user(db, name="Ada", email="ada@example.com")

    found = await api.get(f"/api/v1/users/{user_id}")
    missing = await api.get(f"/api/v1/users/{user_id + 1000}")

    assert (await found.get_json())["email"] == "ada@example.com"
    assert missing.status_code == 404
    assert missing.content_type == "application/problem+json"


# --- creating -------------------------------------------------------------------------


async def test_create_answers_201_with_the_user_and_its_location(api: QuartClient) -> None:
    response = await api.post(
        "/api/v1/users", json={"name": "  Ada Lovelace ", "email": "ada@example.com"}, headers=AUTH
    )

    assert response.status_code == 201
    user = await response.get_json()
    assert user["name"] == "Ada Lovelace"
    assert response.headers["Location"] == f"/api/v1/users/{user['id']}"
    fetched = await (await api.get(response.headers["Location"])).get_json()
    assert fetched == user


async def test_an_email_is_taken_whatever_its_case(api: QuartClient) -> None:
    await create(api, name="Ada", email="ada@example.com")

    response = await api.post(
        "/api/v1/users", json={"name": "Other", "email": "ADA@example.COM"}, headers=AUTH
    )

    assert response.status_code == 409
    assert response.content_type == "application/problem+json"


async def test_names_are_stored_verbatim(api: QuartClient) -> None:
    name = "Robert'); DROP TABLE users; --"

    user = await create(api, name=name, email="bobby@example.com")

    assert user["name"] == name
    assert (await (await api.get(f"/api/v1/users/{user['id']}")).get_json())["name"] == name


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, [["body", "name"], ["body", "email"]]),
        ({"name": "   ", "email": "a@example.com"}, [["body", "name"]]),
        ({"name": "x" * 101, "email": "a@example.com"}, [["body", "name"]]),
        ({"name": "Ada", "email": "not-an-address"}, [["body", "email"]]),
        ({"name": "Ada", "email": TOO_LONG_EMAIL}, [["body", "email"]]),
        ({"name": 5, "email": "a@example.com"}, [["body", "name"]]),
        ({"name": "Ada", "email": "a@example.com", "admin": True}, [["body", "admin"]]),
        ([], [["body"]]),
        ("just a string", [["body"]]),
    ],
)  # fmt: skip
async def test_an_invalid_user_is_422_naming_each_field(
    api: QuartClient, body: Any, fields: list[list[str]]
) -> None:
    errors = await errors_of(await api.post("/api/v1/users", json=body, headers=AUTH))

    assert [error["loc"] for error in errors] == fields
    assert all(error["msg"] for error in errors)


async def test_a_name_of_100_characters_is_allowed(api: QuartClient) -> None:
    user = await create(api, name="n" * 100, email="long@example.com")

    assert len(user["name"]) == 100


@pytest.mark.parametrize("body", [b'{"name": "Ada",', b"", b"\xff\xfe{}", b'"\xdb'])
async def test_a_body_that_is_not_json_is_400(api: QuartClient, body: bytes) -> None:
    response = await api.post(
        "/api/v1/users", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.content_type == "application/problem+json"


async def test_a_body_that_is_not_declared_json_is_415(api: QuartClient) -> None:
    response = await api.post(
        "/api/v1/users",
        data=b"name=Ada&email=ada@example.com",
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415


async def test_a_body_over_max_body_bytes_is_413_and_nothing_is_stored(api: QuartClient) -> None:
    response = await api.post(
        "/api/v1/users", json={"name": "x" * 3000, "email": "big@example.com"}, headers=AUTH
    )

    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    assert (await (await api.get("/api/v1/users")).get_json())["items"] == []


# --- auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}],
)  # fmt: skip
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/users"), ("PATCH", "/api/v1/users/1"), ("DELETE", "/api/v1/users/1")],
)
async def test_writes_without_the_token_are_401(
    api: QuartClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = await api.open(
        path, method=method, json={"name": "Ada", "email": "ada@example.com"}, headers=headers
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.content_type == "application/problem+json"
    assert TOKEN not in await response.get_data(as_text=True)


async def test_with_no_api_token_configured_every_write_is_refused(
    migrated: str, db: asyncmy.Connection
) -> None:
    app = create_app(make_settings(migrated, api_token=None))

    async with app.test_app() as running:
        client = running.test_client()
        for authorization in ("Bearer ", "Bearer None", "Bearer null", "Bearer x"):
            response = await client.post(
                "/api/v1/users",
                json={"name": "Ada", "email": "ada@example.com"},
                headers={"Authorization": authorization},
            )
            assert response.status_code == 401


# --- changing and deleting ------------------------------------------------------------


async def test_patch_changes_only_what_it_names(api: QuartClient) -> None:
    user = await create(api, name="Ada", email="ada@example.com")

    response = await api.patch(f"/api/v1/users/{user['id']}", json={"name": "Ada L."}, headers=AUTH)

    assert response.status_code == 200
    changed = await response.get_json()
    assert (changed["name"], changed["email"]) == ("Ada L.", "ada@example.com")
    assert changed["created_at"] == user["created_at"]
    assert changed["updated_at"] >= user["updated_at"]


async def test_patch_can_change_the_case_of_ones_own_email(api: QuartClient) -> None:
    user = await create(api, name="Ada", email="ada@example.com")

    response = await api.patch(
        f"/api/v1/users/{user['id']}", json={"email": "ADA@example.com"}, headers=AUTH
    )

    assert response.status_code == 200
    assert (await response.get_json())["email"] == "ADA@example.com"


async def test_patch_to_a_taken_email_is_409(api: QuartClient) -> None:
    await create(api, name="Ada", email="ada@example.com")
    other = await create(api, name="Bob", email="bob@example.com")

    response = await api.patch(
        f"/api/v1/users/{other['id']}", json={"email": "Ada@Example.com"}, headers=AUTH
    )

    assert response.status_code == 409


async def test_patch_of_a_missing_user_is_404(api: QuartClient) -> None:
    response = await api.patch("/api/v1/users/999999", json={"name": "x"}, headers=AUTH)

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [({}, ["body"]), ({"name": None}, ["body", "name"]), ({"email": "nope"}, ["body", "email"]),
     ({"name": ""}, ["body", "name"]), ({"nickname": "x"}, ["body", "nickname"])],
)  # fmt: skip
async def test_an_invalid_patch_is_422(api: QuartClient, body: Any, loc: list[str]) -> None:
    user = await create(api, name="Ada", email="ada@example.com")

    errors = await errors_of(
        await api.patch(f"/api/v1/users/{user['id']}", json=body, headers=AUTH)
    )

    assert errors[0]["loc"] == loc


async def test_delete_is_204_then_404(api: QuartClient) -> None:
    user = await create(api, name="Ada", email="ada@example.com")

    first = await api.delete(f"/api/v1/users/{user['id']}", headers=AUTH)
    second = await api.delete(f"/api/v1/users/{user['id']}", headers=AUTH)

    assert first.status_code == 204
    assert await first.get_data() == b""
    assert second.status_code == 404
    assert (await api.get(f"/api/v1/users/{user['id']}")).status_code == 404


async def test_a_deleted_users_email_can_be_used_again(api: QuartClient) -> None:
    user = await create(api, name="Ada", email="ada@example.com")
    await api.delete(f"/api/v1/users/{user['id']}", headers=AUTH)

    again = await create(api, name="Ada again", email="Ada@example.com")

    assert again["id"] != user["id"]
