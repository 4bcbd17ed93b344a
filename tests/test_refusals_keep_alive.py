"""A write refused before its body was read never breaks the client's kept-alive connection.

The service lets the refused body arrive (up to 4 MiB), so the next request on the same
connection works; hypercorn would otherwise drop the connection without a word.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.support.processes import Service
from tests.support.settings import E2E_TOKEN

pytestmark = pytest.mark.e2e

GOOD = {"Authorization": f"Bearer {E2E_TOKEN}", "Content-Type": "application/json"}


def json_body(size: int) -> bytes:
    return b'{"name": "Ada", "email": "ada@example.com", "pad": "' + b"x" * size + b'"}'


@pytest.mark.parametrize("size", [100, 60_000, 200_000, 1_000_000, 3_000_000])
@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/json"}, json_body, 401),
        ({**GOOD, "Authorization": "Bearer wrong"}, json_body, 401),
        ({**GOOD, "Content-Type": "text/plain"}, json_body, 415),
        (GOOD, lambda size: b"{" * size, 400),
    ],
)
def test_the_connection_survives_a_refused_write(
    service: Service,
    headers: dict[str, str],
    body: object,
    status: int,
    size: int,
) -> None:
    payload = body(size)  # type: ignore[operator]
    # past MAX_BODY_BYTES (64 KiB), a body that passed auth and content type is too large
    expected = 413 if len(payload) > 65536 and status == 400 else status
    url = urlsplit(service.base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request("POST", "/api/v1/users", body=payload, headers=headers)
        refusal = connection.getresponse()
        refusal.read()
        socket_before = connection.sock

        assert refusal.status == expected
        assert not refusal.will_close, "bodies up to 4 MiB are read to the end, not cut"
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()

        assert answer.status == 200
        assert connection.sock is socket_before, "the second request needed a new connection"
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("depth", [1_000, 30_000])
def test_json_nested_too_deep_is_a_bad_request(service: Service, method: str, depth: int) -> None:
    url = urlsplit(service.base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    path = "/api/v1/users" if method == "POST" else "/api/v1/users/1"
    try:
        connection.request(method, path, body=b"[" * depth + b"]" * depth, headers=GOOD)
        refusal = connection.getresponse()
        problem = json.loads(refusal.read())

        assert refusal.status == 400
        assert refusal.getheader("Content-Type") == "application/problem+json"
        assert "nested" in problem["detail"]
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
