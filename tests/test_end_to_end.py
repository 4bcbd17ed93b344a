"""hypercorn started as a real process, a real upstream stub on loopback, the real MariaDB."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncmy
import httpx
import pytest

from tests.support.factories import insert_user
from tests.support.processes import (
    Service,
    running_service,
    serve_command,
)
from tests.support.settings import E2E_TOKEN
from tools.ports import free_port
from tools.upstream_stub import running_stub

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
        yield client


async def stub_stats(stub: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, int] = (await client.get(f"{stub}/_stats")).json()
        return stats


async def test_index_answers_the_upstream_posts_in_order(http: httpx.AsyncClient) -> None:
    response = await http.get("/")

    assert response.status_code == 200
    assert [post["id"] for post in response.json()] == [1, 2]
    assert response.json()[0]["title"] == "post 1"


async def test_db_answers_the_users(http: httpx.AsyncClient, db: asyncmy.Connection) -> None:
    user_id = await insert_user(db, name="Grace Hopper", email="grace@example.com")

    response = await http.get("/db")

    assert response.status_code == 200
    assert response.json()[0]["id"] == user_id
    assert response.json()[0]["name"] == "Grace Hopper"
    assert response.json()[0]["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("PATCH", "/db", 405)]
)
async def test_errors_are_problem_json(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await http.request(method, path)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


async def test_answers_without_a_body_carry_no_content_type(
    http: httpx.AsyncClient, db: asyncmy.Connection
) -> None:
    auth = {"Authorization": f"Bearer {E2E_TOKEN}"}
    created = await http.post(
        "/api/v1/users", json={"name": "Ada", "email": "ada@example.com"}, headers=auth
    )
    location, tag = created.headers["Location"], created.headers["ETag"]

    not_modified = await http.get(location, headers={"If-None-Match": tag})
    deleted = await http.delete(location, headers=auth)

    assert (not_modified.status_code, deleted.status_code) == (304, 204)
    for answer in (not_modified, deleted):
        assert answer.content == b""
        assert "Content-Type" not in answer.headers  # no body, so no type (RFC 9110 8.3)
    assert "Content-Length" not in deleted.headers  # never on a 204 (RFC 9110 8.6)


async def test_the_json_log_line_carries_the_request_id(
    http: httpx.AsyncClient, service: Service
) -> None:
    response = await http.get("/nope", headers={"X-Request-ID": "e2e-trace-7"})
    assert response.headers["X-Request-ID"] == "e2e-trace-7"

    async with asyncio.timeout(5):
        while True:
            records = [json.loads(line) for line in service.log_lines() if line.startswith("{")]
            mine = [record for record in records if record.get("request_id") == "e2e-trace-7"]
            if mine:
                break
            await asyncio.sleep(0.05)

    assert mine[0]["path"] == "/nope"
    assert mine[0]["status"] == 404
    assert all(line.startswith("{") for line in service.log_lines()), "every log line is JSON"


async def test_every_failure_of_the_real_transport_is_named(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    paths = ["/posts/1", "/close", "/reset", "/garbage", "/status/500", "/posts/999"]
    urls = ",".join(stub + path for path in paths)

    with running_service(tmp_path, DATABASE_URL=migrated, UPSTREAM_URLS=urls) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            response = await client.get("/")

    assert response.status_code == 502
    codes = {error["url"].removeprefix(stub): error["code"] for error in response.json()["errors"]}
    assert codes == {
        "/close": "unreachable",
        "/reset": "unreachable",
        "/garbage": "bad_response",
        "/status/500": "upstream_error",
        "/posts/999": "not_found",
    }


async def test_refused_and_slow_upstreams_answer_within_the_timeout(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    urls = f"http://127.0.0.1:{free_port()}/posts/1,{stub}/slow/30/1"

    with running_service(
        tmp_path, DATABASE_URL=migrated, UPSTREAM_URLS=urls, UPSTREAM_TIMEOUT="0.5"
    ) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=5) as client:
            response = await client.get("/")

    assert response.status_code == 504
    assert [error["code"] for error in response.json()["errors"]] == ["unreachable", "timeout"]


async def test_the_fan_out_has_every_call_in_flight_at_once(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    urls = ",".join(f"{stub}/slow/0.3/{n}" for n in range(1, 11))

    with running_service(tmp_path, DATABASE_URL=migrated, UPSTREAM_URLS=urls) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            await client.get(f"{stub}/_reset")
            response = await client.get("/")
            stats = await stub_stats(stub)

    assert response.status_code == 200
    assert [post["id"] for post in response.json()] == list(range(1, 11))
    assert stats["calls"] == 10
    assert stats["max_in_flight"] == 10


async def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    with running_service(
        tmp_path, DATABASE_URL=migrated, UPSTREAM_URLS=f"{stub}/slow/1/1"
    ) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            in_flight = asyncio.create_task(client.get("/"))
            await asyncio.sleep(0.3)
            service.process.terminate()
            response = await in_flight
        exit_code = await asyncio.to_thread(service.process.wait, 15)

    assert response.status_code == 200
    assert exit_code == 0


async def test_with_the_database_down_it_still_serves(migrated: str, tmp_path: Path) -> None:
    nothing_listens = f"mysql://app:pw@127.0.0.1:{free_port()}/app"

    with running_service(tmp_path, DATABASE_URL=nothing_listens) as service:
        async with (
            httpx.AsyncClient(base_url=service.base, timeout=10) as client,
            asyncio.timeout(5),
        ):
            health = await client.get("/healthz")
            users = await client.get("/db")

    assert health.status_code == 200
    assert users.status_code == 503
    assert users.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("UPSTREAM_TIMEOUT", "soon"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("DATABASE_URL", "mysql://u:hunter2@h:99999/db"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path, name: str, value: str) -> None:
    settings = {"DATABASE_URL": "mysql://u:p@127.0.0.1:3306/db", name: value}

    command = serve_command(tmp_path, **settings)
    result = subprocess.run(**command, capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "hunter2" not in result.stderr


async def test_one_post_and_a_missing_one(http: httpx.AsyncClient) -> None:
    found = await http.get("/api/v1/posts/42")
    missing = await http.get("/api/v1/posts/1000")

    assert found.json() == {"userId": 5, "id": 42, "title": "post 42", "body": "stub"}
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


async def test_two_fan_outs_of_50_share_the_bound(migrated: str, tmp_path: Path) -> None:
    # distinct ids in each: the same ids would share calls (coalescing)
    first, second = range(1, 51), range(51, 101)

    with running_stub(delay=0.05) as slow_stub:
        settings = {"UPSTREAM_BASE_URL": slow_stub, "UPSTREAM_MAX_CONCURRENCY": "10"}
        with running_service(tmp_path, DATABASE_URL=migrated, **settings) as service:
            async with httpx.AsyncClient(base_url=service.base, timeout=30) as client:
                answers = await asyncio.gather(
                    *(client.get("/api/v1/posts", params={"ids": _ids(r)}) for r in (first, second))
                )
                stats = await stub_stats(slow_stub)

    for answer, ids in zip(answers, (first, second), strict=True):
        assert answer.status_code == 200
        assert [item["post"]["id"] for item in answer.json()["items"]] == list(ids)
    assert stats["calls"] == 100
    assert stats["max_in_flight"] == 10


def _ids(ids: range) -> str:
    return ",".join(str(n) for n in ids)


UNPARSED = {
    "a raw byte in the target": (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a NUL in a header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "a header without a colon": (b"GET / HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n", 400),
    "HTTP/1.1 without Host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    "a bad Content-Length": (
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        400,
    ),
    "a transfer coding": (
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
}


@pytest.mark.parametrize(("raw", "status"), UNPARSED.values(), ids=UNPARSED.keys())
async def test_a_request_the_server_cannot_parse_gets_a_problem(
    service: Service, raw: bytes, status: int
) -> None:
    port = int(service.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    answer = await asyncio.wait_for(reader.read(), 10)  # it closes the connection after
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")

    assert lines[0].startswith(f"http/1.1 {status}")
    assert "content-type: application/problem+json" in lines
    assert any(line.startswith("x-request-id: ") for line in lines)
    assert json.loads(body)["status"] == status


WEBSOCKET_UPGRADES = {
    "to an HTTP route": ("/", "x", 400, "no WebSocket endpoints"),
    "to no route": ("/no/such/route", "x", 404, "not found"),
    "with a malformed Host": ("/", "a..b", 400, "The Host header"),
}


@pytest.mark.parametrize(
    ("path", "host", "status", "says"), WEBSOCKET_UPGRADES.values(), ids=WEBSOCKET_UPGRADES.keys()
)
async def test_a_websocket_upgrade_gets_a_problem_with_its_request_id(
    service: Service, path: str, host: str, status: int, says: str
) -> None:
    request_id = f"ws-upgrade-{len(host)}-{status}"
    port = int(service.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n".encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    lines = head.lower().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.startswith("content-length"))
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    writer.close()

    assert lines[0].startswith(f"http/1.1 {status}")
    assert "content-type: application/problem+json" in lines
    assert f"x-request-id: {request_id}" in lines
    assert body["status"] == status
    assert says in body["detail"]
    logged = [line for line in service.log_lines() if request_id in line]
    assert len(logged) == 1
    assert json.loads(logged[0])["status"] == status
