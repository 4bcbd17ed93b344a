"""Each constraint the OpenAPI document states, and the server, agree on values just inside
and just outside it: what the document allows the server accepts, and what the server
refuses the document rules out. The document's schemas are checked as a consumer's
validator would (JSON Schema 2020-12, formats asserted)."""

from __future__ import annotations

from typing import Any

import asyncmy
import pytest
from jsonschema import Draft202012Validator
from quart.testing import QuartClient

from tests.support.settings import AUTH

# Unicode's White_Space characters: what the server trims.
WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
# 254 characters, the most an address may have: 64 before the @, labels of at most 63.
LONGEST_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"

NAMES = {
    "A": True,
    "a" * 100: True,
    "a" * 101: False,
    " " + "a" * 100 + " ": True,  # trimmed first, then counted
    "\u0085" + "a" * 100: True,  # U+0085 is whitespace to the server: trimmed
    "\u0085" + "a" * 101: False,
    "": False,
    WS: False,  # every character the server trims, and nothing else
    "\x1f\x1c": True,  # separators: whitespace to str.strip(), not to the server
    "\ufeff": True,  # not whitespace to the server (it is to ECMAScript's \s)
    "Ada\u2003Lovelace": True,
}
EMAILS = {
    "ada@example.com": True,
    LONGEST_EMAIL: True,
    "a" + LONGEST_EMAIL: False,
    "ada@example.test": False,
    "ada@Example.ARPA": False,
    "ada@onion.onion": False,
    "ada@localhost": False,
    "ada@test.example.org": True,  # special-use only as the last label
    "not an address": False,
}
IDS = {
    "1": True,
    "1,2,3": True,
    " 1 , 2 ": True,
    "007": True,
    ",".join(["1"] * 100): True,
    ",".join(["1"] * 101): False,
    "": False,
    "0": False,
    "1,0": False,
    "-1": False,
    "1,": False,
    "1,,2": False,
    "1.5": False,
    "\u0661": False,  # ARABIC-INDIC DIGIT ONE: a digit to Python, not an id
}
PATCHES: list[tuple[dict[str, Any], bool]] = [
    ({"name": "Ada"}, True),
    ({"email": "ada.l@example.com"}, True),
    ({}, False),
    ({"name": None}, False),
    ({"email": None}, False),
    ({"name": "Ada", "role": "admin"}, False),
]


def schema_of(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


def document_allows(schema: dict[str, Any], value: Any) -> bool:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return bool(validator.is_valid(value))


@pytest.fixture
async def spec(api: QuartClient) -> dict[str, Any]:
    document: dict[str, Any] = await (await api.get("/openapi.json")).get_json()
    return document


def query_schema(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    parameters = spec["paths"][path]["get"]["parameters"]
    schema: dict[str, Any] = next(p["schema"] for p in parameters if p["name"] == name)
    return schema


async def test_names(api: QuartClient, spec: dict[str, Any], db: asyncmy.Connection) -> None:
    schema = schema_of(spec, "UserCreate")
    verdicts = {}
    for n, name in enumerate(NAMES):
        body = {"name": name, "email": f"user{n}@example.com"}
        answer = await api.post("/api/v1/users", json=body, headers=AUTH)
        verdicts[name] = (document_allows(schema, body), answer.status_code == 201)

    assert {name: allowed for name, (allowed, _) in verdicts.items()} == NAMES
    assert {name: accepted for name, (_, accepted) in verdicts.items()} == NAMES


async def test_emails(api: QuartClient, spec: dict[str, Any], db: asyncmy.Connection) -> None:
    schema = schema_of(spec, "UserCreate")
    verdicts = {}
    for email in EMAILS:
        body = {"name": "Ada", "email": email}
        answer = await api.post("/api/v1/users", json=body, headers=AUTH)
        verdicts[email] = (document_allows(schema, body), answer.status_code == 201)

    assert {email: allowed for email, (allowed, _) in verdicts.items()} == EMAILS
    assert {email: accepted for email, (_, accepted) in verdicts.items()} == EMAILS


async def test_post_ids(api: QuartClient, spec: dict[str, Any]) -> None:
    schema = query_schema(spec, "/api/v1/posts", "ids")
    verdicts = {}
    for ids in IDS:
        answer = await api.get("/api/v1/posts", query_string={"ids": ids})
        verdicts[ids] = (document_allows(schema, ids), answer.status_code != 422)

    assert {ids: allowed for ids, (allowed, _) in verdicts.items()} == IDS
    assert {ids: accepted for ids, (_, accepted) in verdicts.items()} == IDS


async def test_paging(api: QuartClient, spec: dict[str, Any], db: asyncmy.Connection) -> None:
    cases = {("limit", 1): True, ("limit", 200): True, ("limit", 0): False}
    cases |= {("limit", 201): False, ("after", 0): True, ("after", -1): False}
    verdicts = {}
    for name, value in cases:
        schema = query_schema(spec, "/api/v1/users", name)
        answer = await api.get("/api/v1/users", query_string={name: str(value)})
        verdicts[name, value] = (document_allows(schema, value), answer.status_code == 200)

    assert {case: allowed for case, (allowed, _) in verdicts.items()} == cases
    assert {case: accepted for case, (_, accepted) in verdicts.items()} == cases


async def test_patches(api: QuartClient, spec: dict[str, Any], db: asyncmy.Connection) -> None:
    created = await api.post(
        "/api/v1/users", json={"name": "Ada", "email": "ada@example.com"}, headers=AUTH
    )
    user_id = (await created.get_json())["id"]
    schema = schema_of(spec, "UserPatch")
    verdicts = []
    for body, _ in PATCHES:
        answer = await api.patch(f"/api/v1/users/{user_id}", json=body, headers=AUTH)
        verdicts.append((document_allows(schema, body), answer.status_code == 200))

    assert [allowed for allowed, _ in verdicts] == [expected for _, expected in PATCHES]
    assert [accepted for _, accepted in verdicts] == [expected for _, expected in PATCHES]
