"""A write refused before its body was read never breaks the client's kept-alive connection.

Either the next request on the same connection works, or the refusal said
`Connection: close` (hypercorn otherwise drops such connections without a word).
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest

from tests.conftest import E2E_TOKEN
from tests.e2e import Service

pytestmark = pytest.mark.e2e

GOOD = {"Authorization": f"Bearer {E2E_TOKEN}", "Content-Type": "application/json"}


def json_body(size: int) -> bytes:
    return b'{"name": "Ada", "email": "ada@example.com", "pad": "' + b"x" * size + b'"}'


@pytest.mark.parametrize("size", [100, 60_000, 200_000, 1_000_000])
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
    expected = 413 if len(payload) > 65536 and status != 401 and status != 415 else status
    url = urlsplit(service.base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request("POST", "/api/v1/users", body=payload, headers=headers)
        refusal = connection.getresponse()
        refusal.read()
        socket_before = connection.sock

        assert refusal.status == expected
        if refusal.will_close:
            assert refusal.getheader("Connection", "").lower() == "close"
            return
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()

        assert answer.status == 200
        assert connection.sock is socket_before, "the second request needed a new connection"
    finally:
        connection.close()
