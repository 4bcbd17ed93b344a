"""The Host header, checked at the edge (app.web.hosts): what the grammar refuses is a 400
problem with a request id, counted and logged in one line like any answer; what it allows
is served as before."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart.testing import QuartClient

from tests.support.processes import Service

REFUSED = [
    "a..b",
    "x" * 64 + ".example.com",
    "ex ample.com",
    "[::1]x",
    "example.com:80:80",
    "example.com:http",
    "",
    ".",
    "a" * 250 + ".com",
]
# Quart's test client cannot build a request with these: sent over the wire instead.
UNBUILDABLE = ["[::1", "[not-an-address]"]
ALLOWED = [
    "example.com",
    "EXAMPLE.com.",
    "localhost:8000",
    "127.0.0.1",
    "[::1]:8000",
    "a_b.example",
]


async def refused_count(client: QuartClient) -> float:
    text = await (await client.get("/metrics")).get_data(as_text=True)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.labels.get("status") == "400"
    )


@pytest.mark.parametrize("host", REFUSED)
async def test_a_host_the_grammar_refuses_is_a_400_problem(
    client: QuartClient, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = await refused_count(client)
    caplog.clear()

    response = await client.get("/healthz", headers={"Host": host})

    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert "Host" in (await response.get_json())["detail"]
    assert response.headers["X-Request-ID"]
    assert [record.name for record in caplog.records] == ["app.access"]
    assert not any(record.exc_info for record in caplog.records)
    assert await refused_count(client) == before + 1


async def test_two_host_headers_are_refused(client: QuartClient) -> None:
    response = await client.get("/healthz", headers=[("Host", "a.example"), ("Host", "b.example")])

    assert response.status_code == 400


@pytest.mark.e2e
async def test_on_the_wire_every_refused_host_is_a_400_problem(service: Service) -> None:
    port = int(service.base.rsplit(":", 1)[1])
    answers = []
    for host in [*REFUSED, *UNBUILDABLE]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        writer.close()
        await writer.wait_closed()
        answers.append(
            (
                head.split(" ", 2)[1],
                "content-type: application/problem+json" in head,
                "x-request-id:" in head,
            )
        )

    assert answers == [("400", True, True)] * (len(REFUSED) + len(UNBUILDABLE))
    assert not [line for line in service.log_lines() if "Traceback" in line]


@pytest.mark.parametrize("host", ALLOWED)
async def test_a_host_the_grammar_allows_is_served(client: QuartClient, host: str) -> None:
    response = await client.get("/healthz", headers={"Host": host})

    assert response.status_code == 200
