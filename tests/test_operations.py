"""Readiness, metrics, the event-loop guard, upstream retries, rate limits and CORS."""

from __future__ import annotations

import asyncio
import logging
import random
import string
import subprocess
import sys
import time

import asyncmy
import httpx
import pytest
import respx
from prometheus_client.parser import text_string_to_metric_families
from quart.testing import QuartClient

from app import create_app
from app.telemetry.loop_monitor import LoopMonitor
from app.web.proxies import _parse_forwarded
from tests.support.processes import clean_environ
from tests.support.settings import UPSTREAM, make_settings
from tests.support.upstream_mock import mock_answer
from tools.ports import free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: QuartClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return samples(await response.get_data(as_text=True))


# --- readiness ------------------------------------------------------------------------


async def test_ready_when_the_database_answers(client: QuartClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert await response.get_json() == {"status": "ready"}


async def test_not_ready_at_once_when_the_database_is_away() -> None:
    app = create_app(make_settings(f"mysql://app:pw@127.0.0.1:{free_port()}/app"))

    async with app.test_app() as running:
        client = running.test_client()
        started = time.monotonic()
        ready = await client.get("/readyz")
        elapsed = time.monotonic() - started
        health = await client.get("/healthz")

    assert ready.status_code == 503
    assert ready.content_type == "application/problem+json"
    assert elapsed < 3
    assert health.status_code == 200


async def test_ready_again_at_once_when_idle_connections_died(
    client: QuartClient, db: asyncmy.Connection
) -> None:
    # What a database restart leaves: every idle connection of the service closed by the
    # server. The database itself answers, so the service is ready.
    assert (await client.get("/readyz")).status_code == 200
    async with db.cursor() as cursor:
        await cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST"
            " WHERE ID <> CONNECTION_ID() AND COMMAND = 'Sleep'"
        )
        for (connection_id,) in await cursor.fetchall():
            await cursor.execute("KILL CONNECTION %s", (connection_id,))

    ready = await client.get("/readyz")
    users = await client.get("/api/v1/users")

    assert (ready.status_code, users.status_code) == (200, 200)


# --- metrics --------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_method_and_status(
    client: QuartClient, db: asyncmy.Connection
) -> None:
    route = ("route", "/api/v1/users/<int:user_id>")
    key = ("http_requests_total", (("method", "GET"), route, ("status", "404")))
    before = (await scrape(client)).get(key, 0.0)

    await client.get("/api/v1/users/123456")
    await client.get("/api/v1/users/654321")
    after = await scrape(client)

    assert after[key] == before + 2
    latency = ("http_request_duration_seconds_count", (("method", "GET"), route))
    assert after[latency] >= 2


async def test_unknown_paths_share_one_label(client: QuartClient) -> None:
    await client.get("/scanner/probe/1")
    await client.get("/scanner/probe/2")
    text = await (await client.get("/metrics")).get_data(as_text=True)

    assert "/scanner/probe" not in text
    assert 'route="<unmatched>"' in text


async def test_no_request_adds_a_series_beyond_the_bounded_set(client: QuartClient) -> None:
    paths = ["/api/v1/users", "/api/v1/users/1", "/", "/no/such/path", "/healthz"]
    tokens = [{}, {"Authorization": "Bearer guess"}]

    async def send(n: int) -> None:
        # any token is a valid method name: each of these is new
        method = "X" + "".join(random.choices(string.ascii_uppercase, k=12))
        path = paths[n % len(paths)] + ("" if n % 2 else f"?{n}")
        response = await client.open(path, method=method, headers=tokens[n % 2])
        assert response.status_code in (404, 405)

    for n in range(len(paths) * 2):  # every route, token and status once
        await send(n)
    before = len(await scrape(client))
    for n in range(500):
        await send(n)
    after = await scrape(client)

    assert len(after) == before
    assert not [key for key in after if ("method", "other") not in key[1] and "X" in str(key)]


async def test_upstream_calls_are_counted_by_outcome(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{UPSTREAM}/posts/1").respond(
        json={"userId": 1, "id": 1, "title": "t", "body": "b"}
    )
    respx_mock.get(f"{UPSTREAM}/posts/2").respond(404)
    ok = ("upstream_calls_total", (("outcome", "ok"),))
    not_found = ("upstream_calls_total", (("outcome", "not_found"),))
    before = await scrape(client)

    await client.get("/api/v1/posts?ids=1,2")
    after = await scrape(client)

    assert after[ok] == before.get(ok, 0) + 1
    assert after[not_found] == before.get(not_found, 0) + 1
    assert after[("upstream_call_duration_seconds_count", (("outcome", "ok"),))] >= 1


async def test_pool_and_loop_lag_are_exported(client: QuartClient) -> None:
    await asyncio.sleep(0.25)  # a probe tick or two

    metrics = await scrape(client)

    assert metrics[("db_pool_connections", ())] >= 1
    assert ("db_pool_free_connections", ()) in metrics
    assert 0 <= metrics[("event_loop_lag_seconds", ())] < 1


# --- the event-loop guard -------------------------------------------------------------


@pytest.mark.allow_loop_block
async def test_blocking_the_loop_is_caught_and_names_the_route(
    migrated: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(migrated))

    @app.get("/_sleepy")
    async def sleepy() -> str:
        time.sleep(0.4)  # noqa: ASYNC251 (the mistake this test is about)
        return "done"

    caplog.set_level(logging.WARNING, logger="app.telemetry.loop_monitor")
    async with app.test_app() as running:
        client = running.test_client()
        await asyncio.sleep(0.15)  # let the probe start
        await client.get("/_sleepy")
        await asyncio.sleep(0.15)

    blocked = [record for record in caplog.records if record.message == "event loop blocked"]
    assert blocked, "time.sleep in a route went unnoticed"
    assert "/_sleepy" in blocked[0].routes_in_flight  # type: ignore[attr-defined]
    assert blocked[0].blocked_ms >= 250  # type: ignore[attr-defined]


class FakeSchedstat:
    """The thread's CPU wait as Linux would report it: `starved` seconds per stall."""

    def __init__(self, starved: float) -> None:
        self.starved = starved
        self.total = 0.0

    def __call__(self) -> float:
        return self.total

    def stall(self, seconds: float) -> None:
        time.sleep(seconds)  # the loop must really be late
        self.total += min(self.starved, seconds)


@pytest.mark.allow_loop_block
@pytest.mark.parametrize(("starved", "reported"), [(0.0, True), (0.4, False)])
async def test_a_late_loop_counts_as_blocked_only_for_the_time_it_had_a_cpu(
    caplog: pytest.LogCaptureFixture, starved: float, reported: bool
) -> None:
    schedstat = FakeSchedstat(starved)
    monitor = LoopMonitor(threshold=0.2, interval=0.05, cpu_wait=schedstat)
    caplog.set_level(logging.WARNING, logger="app.telemetry.loop_monitor")
    monitor.start()
    await asyncio.sleep(0.1)
    schedstat.stall(0.4)
    await asyncio.sleep(0.1)
    await monitor.stop()

    blocked = [record for record in caplog.records if record.message == "event loop blocked"]
    assert bool(blocked) is reported
    if blocked:
        assert blocked[0].blocked_ms >= 300  # type: ignore[attr-defined]
        assert blocked[0].waited_for_cpu_ms == 0  # type: ignore[attr-defined]


# --- upstream retries -----------------------------------------------------------------


async def test_a_refused_connection_is_tried_again(
    client: QuartClient, respx_mock: respx.MockRouter
) -> None:
    post = {"userId": 1, "id": 3, "title": "t", "body": "b"}
    route = respx_mock.get(f"{UPSTREAM}/posts/3").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=post)]
    )
    retries = ("upstream_retries_total", ())
    before = (await scrape(client)).get(retries, 0)

    response = await client.get("/api/v1/posts/3")

    assert response.status_code == 200
    assert route.call_count == 2
    assert (await scrape(client))[retries] == before + 1


async def test_retries_are_bounded(client: QuartClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(f"{UPSTREAM}/posts/3").mock(side_effect=httpx.ReadError("reset"))

    response = await client.get("/api/v1/posts/3")

    assert response.status_code == 502
    assert route.call_count == 2  # UPSTREAM_RETRIES is 1


@pytest.mark.parametrize(
    "answer", [httpx.Response(500), httpx.Response(404), httpx.ReadTimeout("slow")]
)
async def test_answers_and_timeouts_are_not_retried(
    client: QuartClient, respx_mock: respx.MockRouter, answer: httpx.Response | Exception
) -> None:
    route = mock_answer(respx_mock.get(f"{UPSTREAM}/posts/3"), answer)

    await client.get("/api/v1/posts/3")

    assert route.call_count == 1


# --- rate limit and CORS --------------------------------------------------------------


async def test_writes_past_the_limit_get_429_with_retry_after(
    migrated: str, db: asyncmy.Connection
) -> None:
    app = create_app(make_settings(migrated, api_token="t", write_rate_limit="3/minute"))
    headers = {"Authorization": "Bearer t"}

    async with app.test_app() as running:
        client = running.test_client()
        statuses = [
            (await client.delete(f"/api/v1/users/{n}", headers=headers)).status_code
            for n in range(3)
        ]
        refused = await client.post(
            "/api/v1/users", json={"name": "a", "email": "a@b.co"}, headers=headers
        )
        read = await client.get("/api/v1/users")

    assert statuses == [404, 404, 404]
    assert refused.status_code == 429
    assert refused.content_type == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert read.status_code == 200
    assert "RateLimit-Limit" not in read.headers


async def test_writes_without_a_valid_token_are_401_and_spend_no_budget(
    migrated: str, db: asyncmy.Connection
) -> None:
    app = create_app(make_settings(migrated, api_token="t", write_rate_limit="2/minute"))

    async with app.test_app() as running:
        client = running.test_client()
        guesses = [
            (await client.delete("/api/v1/users/1", headers=headers)).status_code
            for headers in [{}, {"Authorization": "Bearer guess"}] * 3
        ]
        real = [
            (await client.delete(f"/api/v1/users/{n}", headers={"Authorization": "Bearer t"}))
            for n in range(3)
        ]
        guess_when_spent = await client.delete("/api/v1/users/1")

    assert guesses == [401] * 6
    assert [answer.status_code for answer in real] == [404, 404, 429]
    assert guess_when_spent.status_code == 401
    assert guess_when_spent.headers["WWW-Authenticate"] == "Bearer"


async def test_the_write_budget_is_the_peer_s_whatever_it_says_it_forwards(
    migrated: str, db: asyncmy.Connection
) -> None:
    app = create_app(make_settings(migrated, api_token="t", write_rate_limit="2/minute"))

    async with app.test_app() as running:
        client = running.test_client()
        statuses = [
            (
                await client.delete(
                    f"/api/v1/users/{n}",
                    headers={"Authorization": "Bearer t", "X-Forwarded-For": f"203.0.113.{n}"},
                )
            ).status_code
            for n in range(5)
        ]

    assert statuses == [404, 404, 429, 429, 429]


async def test_behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_address(
    migrated: str, db: asyncmy.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        migrated, api_token="t", write_rate_limit="2/minute", trusted_proxies="10.0.0.0/8"
    )
    app = create_app(settings)
    caplog.set_level(logging.INFO, logger="app.access")

    async def delete(peer: str, forwarded: str) -> int:
        response = await client.delete(
            "/api/v1/users/1",
            headers={"Authorization": "Bearer t", "X-Forwarded-For": forwarded},
            scope_base={"client": (peer, 40000)},
        )
        return response.status_code

    async with app.test_app() as running:
        client = running.test_client()
        # through the balancer (10.0.0.5): whatever a client puts left of its own address
        via_proxy = [
            await delete("10.0.0.5", f"{forged}, 198.51.100.7, 10.0.0.9")
            for forged in ("203.0.113.1", "203.0.113.2", "203.0.113.3")
        ]
        other_client = await delete("10.0.0.5", "198.51.100.8")
        # straight to the instance, not from a trusted proxy: the header is not believed
        direct = [await delete("192.0.2.50", f"198.51.100.{n}") for n in (20, 21, 22)]

    assert via_proxy == [404, 404, 429]
    assert other_client == 404
    assert direct == [404, 404, 429]
    clients = [getattr(record, "client", None) for record in caplog.records]
    assert clients[:4] == ["198.51.100.7"] * 3 + ["198.51.100.8"]
    assert clients[4:] == ["192.0.2.50"] * 3


def test_forwarded_headers_name_the_client_and_scheme() -> None:
    chain, protos = _parse_forwarded('for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"')

    assert chain == ["192.0.2.60", "2001:db8::1"]
    assert protos == ["https"]


async def test_a_budget_in_redis_is_shared_by_instances_and_counted_atomically(
    migrated: str, db: asyncmy.Connection, redis_url: str
) -> None:
    settings = make_settings(
        migrated, api_token="t", write_rate_limit="4/minute", rate_limit_storage_url=redis_url
    )
    first, second = create_app(settings), create_app(settings)
    headers = {"Authorization": "Bearer t"}
    peer = {"client": (f"198.51.100.{random.randint(1, 254)}", 1)}

    async with first.test_app() as one, second.test_app() as two:
        clients = [one.test_client(), two.test_client()]
        # one write first (the store's connection and scripts are set up), then nine at once
        warm = await clients[0].delete("/api/v1/users/0", headers=headers, scope_base=peer)
        answers = await asyncio.gather(
            *(
                clients[n % 2].delete(f"/api/v1/users/{n}", headers=headers, scope_base=peer)
                for n in range(1, 10)
            )
        )

    statuses = [answer.status_code for answer in answers]
    assert warm.status_code == 404
    assert sorted(statuses) == [404] * 3 + [429] * 6, statuses


async def test_writes_go_on_uncounted_when_the_budget_store_is_down(
    migrated: str, db: asyncmy.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        migrated,
        api_token="t",
        write_rate_limit="1/minute",
        rate_limit_storage_url=f"redis://:pw@127.0.0.1:{free_port()}/0",
    )
    app = create_app(settings)
    caplog.set_level(logging.WARNING, logger="app.web.rate_limit")

    headers = {"Authorization": "Bearer t"}

    async with app.test_app() as running:
        client: QuartClient = running.test_client()  # type: ignore[assignment]
        before = (await scrape(client)).get(("rate_limit_store_errors_total", ()), 0.0)
        statuses = [
            (await client.delete(f"/api/v1/users/{n}", headers=headers)).status_code
            for n in range(3)
        ]
        after = (await scrape(client))[("rate_limit_store_errors_total", ())]

    assert statuses == [404, 404, 404]
    assert after == before + 3
    warnings = [r for r in caplog.records if "store not answering" in r.getMessage()]
    assert len(warnings) == 1


async def test_cors_headers_only_for_configured_origins(migrated: str) -> None:
    app = create_app(make_settings(migrated, cors_origins="https://app.example"))
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,if-match",
    }

    async with app.test_app() as running:
        client = running.test_client()
        allowed = await client.options("/api/v1/users", headers=preflight)
        read = await client.get("/healthz", headers={"Origin": "https://app.example"})
        other = await client.get("/healthz", headers={"Origin": "https://evil.example"})

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert "if-match" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "etag" in read.headers["Access-Control-Expose-Headers"].lower()
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_no_cors_headers_without_cors_origins(client: QuartClient) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://app.example"})

    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_server_process_leaves_its_start_up_objects_out_of_garbage_collection() -> None:
    # app.asgi is what every server process loads; a full collection that walks tens of
    # thousands of start-up objects stalls every request in flight for ~100 ms.
    program = "import gc, app.asgi; print(gc.get_freeze_count())"
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=clean_environ(DATABASE_URL="mysql://app:secret@127.0.0.1:1/app"),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert int(result.stdout.split()[-1]) > 10_000
