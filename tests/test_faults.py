"""Fault drills against hypercorn processes: the database going away, SIGTERM under load,
fuzzing, several workers, and the event loop under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Service, clean_environ, running_service
from tools.devdb import PrivateMariaDB
from tools.ports import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Answer:
    started: float
    finished: float
    status: int


async def hammer(base: str, paths: list[str], stop: asyncio.Event, answers: list[Answer]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = (await client.get(paths[n % len(paths)])).status_code
            except httpx.TransportError:
                status = -1  # the service itself did not answer
            answers.append(Answer(started, time.monotonic(), status))
            n += 1
            await asyncio.sleep(0.005)


async def until_ready(client: httpx.AsyncClient, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while True:
            if (await client.get("/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.05)


def blocked_loop_lines(service: Service) -> list[str]:
    return [line for line in service.log_lines() if "event loop blocked" in line]


async def test_database_restart_under_traffic(tmp_path: Path) -> None:
    database = PrivateMariaDB(tmp_path / "db", port=free_port(), database="drill")
    await asyncio.to_thread(database.start)
    try:
        with running_service(tmp_path, DATABASE_URL=database.url) as service:
            answers: list[Answer] = []
            stop = asyncio.Event()
            paths = ["/api/v1/users?limit=5", "/db", "/api/v1/users/1"]
            workers = [
                asyncio.create_task(hammer(service.base, paths, stop, answers)) for _ in range(4)
            ]
            await asyncio.sleep(1.0)

            down_from = time.monotonic()
            await asyncio.to_thread(database.stop)
            await asyncio.sleep(2.0)
            async with httpx.AsyncClient(base_url=service.base) as client:
                during = await client.get("/readyz")
                await asyncio.to_thread(database.start)
                up_at = time.monotonic()
                await until_ready(client)
            ready_at = time.monotonic()

            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*workers)
            service_log = blocked_loop_lines(service)

        statuses = {answer.status for answer in answers}
        assert statuses <= {200, 404, 503}, statuses
        assert during.status_code == 503
        unavailable = [answer for answer in answers if answer.status == 503]
        assert unavailable, "the drill never saw the database down"
        for answer in unavailable:
            assert answer.finished >= down_from
            assert answer.started <= ready_at, "503 after the database was back"
        after = [answer.status for answer in answers if answer.started > ready_at]
        assert len(after) >= 50
        assert all(status in {200, 404} for status in after)
        assert up_at <= ready_at
        assert service_log == []
    finally:
        database.stop()


async def test_a_frozen_database_costs_a_503_within_the_query_timeout(tmp_path: Path) -> None:
    database = PrivateMariaDB(tmp_path / "db", port=free_port(), database="frozen")
    await asyncio.to_thread(database.start)
    pid = database.pid()
    assert pid is not None
    try:
        with running_service(
            tmp_path, DATABASE_URL=database.url, DB_QUERY_TIMEOUT="1", DB_POOL_TIMEOUT="0.5"
        ) as service:
            answers: list[Answer] = []
            stop = asyncio.Event()
            paths = ["/db", "/api/v1/users/1", "/api/v1/users?limit=5"]
            workers = [
                asyncio.create_task(hammer(service.base, paths, stop, answers)) for _ in range(16)
            ]
            health: list[Answer] = []
            health_stop = asyncio.Event()
            health_worker = asyncio.create_task(
                hammer(service.base, ["/healthz"], health_stop, health)
            )
            await asyncio.sleep(0.5)
            frozen_at = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)
                async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
                    ready = await client.get("/readyz")
                await asyncio.sleep(5.0)
            finally:
                os.kill(pid, signal.SIGCONT)
            thawed_at = time.monotonic()
            async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
                await until_ready(client)
            await asyncio.sleep(1.0)
            stop.set()
            health_stop.set()
            await asyncio.gather(*workers, health_worker)
            service_log = blocked_loop_lines(service)

        assert ready.status_code == 503
        during = [a for a in answers if a.started >= frozen_at and a.finished <= thawed_at]
        assert during, "no request was answered while the database was frozen"
        assert {a.status for a in answers} <= {200, 404, 503}
        assert 503 in {a.status for a in during}
        # 1 s of DB_QUERY_TIMEOUT; generous for a loaded machine, far from a hang (6 s)
        assert max(a.finished - a.started for a in answers) < 3.0
        assert {a.status for a in health} == {200}
        assert [a for a in answers if a.started > thawed_at + 0.5 and a.status == 503] == []
        assert service_log == []
    finally:
        os.kill(pid, signal.SIGCONT)
        database.stop()


async def test_starts_without_the_database_and_migrates_when_it_comes(tmp_path: Path) -> None:
    database = PrivateMariaDB(tmp_path / "db", port=free_port(), database="late")
    try:
        with running_service(tmp_path, DATABASE_URL=database.url) as service:
            async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
                started = time.monotonic()
                health = await client.get("/healthz")
                ready = await client.get("/readyz")
                users = await client.get("/api/v1/users")
                quick = time.monotonic() - started

                await asyncio.to_thread(database.start)
                await until_ready(client)
                after = await client.get("/api/v1/users")

        assert (health.status_code, ready.status_code, users.status_code) == (200, 503, 503)
        assert quick < 3
        assert after.status_code == 200
        assert after.json() == {"items": [], "next_after": None}  # the migrations ran
    finally:
        database.stop()


async def test_sigterm_under_load_lets_every_request_finish(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    settings = {"UPSTREAM_URLS": f"{stub}/slow/1/1", "SHUTDOWN_GRACE": "10"}
    with running_service(tmp_path, DATABASE_URL=migrated, **settings) as service:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=service.base, timeout=15, limits=limits) as client:
            in_flight = [asyncio.create_task(client.get("/")) for _ in range(20)]
            await asyncio.sleep(0.4)
            service.process.terminate()
            answers = await asyncio.gather(*in_flight, return_exceptions=True)
        exit_code = await asyncio.to_thread(service.process.wait, 20)
        log = service.log_lines()

    assert [getattr(answer, "status_code", answer) for answer in answers] == [200] * 20
    assert exit_code == 0
    assert any("HTTP client and database pool closed" in line for line in log)


async def in_flight_then(
    service: Service, signal_it: object, connections: int = 32
) -> list[httpx.Response | BaseException]:
    """`connections` slow requests in flight, then `signal_it()`; every answer or error."""
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=service.base, timeout=15, limits=limits) as client:
        in_flight = [asyncio.create_task(client.get("/")) for _ in range(connections)]
        await asyncio.sleep(0.4)
        signal_it()  # type: ignore[operator]
        return await asyncio.gather(*in_flight, return_exceptions=True)


async def test_sigterm_to_the_process_group_drains_every_worker(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    # systemd's default KillMode=control-group, or kill -- -PGID: every worker gets SIGTERM
    # at the same moment as the supervisor.
    settings = {"UPSTREAM_URLS": f"{stub}/slow/1/1", "SHUTDOWN_GRACE": "10", "WORKERS": "2"}
    with running_service(tmp_path, DATABASE_URL=migrated, **settings) as service:
        group = os.getpgid(service.process.pid)
        answers = await in_flight_then(service, lambda: os.killpg(group, signal.SIGTERM))
        exit_code = await asyncio.to_thread(service.process.wait, 20)
        log = service.log_lines()

    assert [getattr(answer, "status_code", repr(answer)) for answer in answers] == [200] * 32
    assert exit_code == 0
    assert sum("HTTP client and database pool closed" in line for line in log) == 2


async def test_answers_written_after_sigterm_say_connection_close(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    settings = {"UPSTREAM_URLS": f"{stub}/slow/1/1", "SHUTDOWN_GRACE": "10"}
    with running_service(tmp_path, DATABASE_URL=migrated, **settings) as service:
        answers = await in_flight_then(
            service, lambda: service.process.send_signal(signal.SIGTERM), connections=8
        )

    assert [getattr(answer, "status_code", repr(answer)) for answer in answers] == [200] * 8
    assert [answer.headers.get("Connection") for answer in answers] == ["close"] * 8  # type: ignore[union-attr]


async def connection_attempt(port: int) -> str:
    """A new connection's fate: `refused` (never established: refused, or reset during
    the handshake, so the client knows it sent nothing), `answered`, or `unanswered`
    (accepted, then closed or reset without a byte)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(64), 15)
    except (ConnectionError, TimeoutError):
        answer = b""
    finally:
        writer.close()
    return "answered" if answer.startswith(b"HTTP/1.1") else "unanswered"


async def connection_attempts(port: int, count: int, every: float) -> list[str]:
    """`count` new connections, one every `every` seconds, each left to its fate."""
    attempts = []
    for _ in range(count):
        await asyncio.sleep(every)
        attempts.append(asyncio.create_task(connection_attempt(port)))
    return await asyncio.gather(*attempts)


async def test_a_stopping_server_refuses_new_connections_rather_than_dropping_them(
    stub: str, migrated: str, tmp_path: Path
) -> None:
    settings = {"UPSTREAM_URLS": f"{stub}/slow/1/1", "SHUTDOWN_GRACE": "10", "WORKERS": "2"}
    with running_service(tmp_path, DATABASE_URL=migrated, **settings) as service:
        port = int(service.base.rsplit(":", 1)[1])
        attempting: list[asyncio.Task[list[str]]] = []

        def stop_then_connect() -> None:
            service.process.send_signal(signal.SIGTERM)
            # while the in-flight requests (0.6 s left) finish
            attempting.append(asyncio.create_task(connection_attempts(port, 8, every=0.05)))

        answers = await in_flight_then(service, stop_then_connect, connections=8)
        fates = await attempting[0]
        exit_code = await asyncio.to_thread(service.process.wait, 20)

    assert [getattr(answer, "status_code", repr(answer)) for answer in answers] == [200] * 8
    assert exit_code == 0
    assert len(fates) == 8
    # Unanswered, the client cannot tell whether its request ran. Before the fix every
    # connection after the workers stopped listening was (5 of 8 here); one that reaches
    # the kernel's accept queue at the instant the last listener closes still is reset.
    assert fates.count("unanswered") <= 1
    assert "refused" in fates


def test_workers_stop_by_themselves_when_their_supervisor_is_gone(
    migrated: str, tmp_path: Path
) -> None:
    with running_service(tmp_path, DATABASE_URL=migrated, WORKERS="2") as service:
        workers = worker_pids(service.process.pid)
        service.process.kill()  # SIGKILL: no word to the workers
        service.process.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_cmdline(pid) for pid in workers):
            time.sleep(0.2)
        left = [pid for pid in workers if _cmdline(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)

    assert len(workers) == 2
    assert left == []


async def test_the_real_routes_never_block_the_loop_under_load(service: Service) -> None:
    paths = [
        "/",
        "/db",
        "/api/v1/users?limit=50",
        "/api/v1/posts?ids=1,2,3,4,5",
        "/healthz",
        "/nope",
    ]
    answers: list[Answer] = []
    stop = asyncio.Event()
    workers = [asyncio.create_task(hammer(service.base, paths, stop, answers)) for _ in range(32)]
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*workers)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{service.base}/metrics")).text

    assert len(answers) > 500
    assert {answer.status for answer in answers} <= {200, 404}
    assert blocked_loop_lines(service) == []
    blocked = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "event_loop_blocked_total"
    ]
    assert blocked == [0.0]


async def test_metrics_add_up_across_workers(migrated: str, tmp_path: Path) -> None:
    with running_service(tmp_path, DATABASE_URL=migrated, WORKERS="2") as service:
        for _ in range(40):
            # a new connection each time, so that both workers get some
            async with httpx.AsyncClient(base_url=service.base) as fresh:
                await fresh.get("/api/v1/users/987654321")
        async with httpx.AsyncClient(base_url=service.base) as client:
            text = (await client.get("/metrics")).text
        records = [json.loads(line) for line in service.log_lines() if line.startswith("{")]

    answered_by = {r["pid"] for r in records if r.get("path") == "/api/v1/users/987654321"}
    assert len(answered_by) == 2, "one worker answered everything; the sum proves nothing"
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_total"
        and sample.labels.get("route") == "/api/v1/users/<int:user_id>"
        and sample.labels.get("status") == "404"
    )
    assert counted == 40


def worker_pids(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    # spawn's resource tracker is a child too; the workers are the ones serving
    return {int(child) for child in children if "resource_tracker" not in _cmdline(int(child))}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


async def test_a_killed_worker_is_replaced_and_nothing_is_left_behind(
    migrated: str, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    with running_service(tmp_path, DATABASE_URL=migrated, WORKERS="2", TMPDIR=str(temp)) as service:
        (metrics_dir,) = temp.glob("app-metrics-*")
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            await until_ready(client)
            first = worker_pids(service.process.pid)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            answers = []
            async with asyncio.timeout(20):
                while len(now := worker_pids(service.process.pid) - {victim}) < 2:
                    # a new connection each time: the surviving worker answers meanwhile
                    async with httpx.AsyncClient(base_url=service.base, timeout=10) as fresh:
                        answers.append((await fresh.get("/healthz")).status_code)
                    await asyncio.sleep(0.05)
            await until_ready(client)
            live_gauges = {path.name for path in metrics_dir.glob("gauge_live*")}
        exit_code = service.stop()
        log = service.log_lines()

    assert service.process.poll() == 0 == exit_code
    assert len(answers) >= 1
    assert set(answers) == {200}
    assert len(now & first) == 1, "the other worker kept serving; one new worker joined it"
    assert not [name for name in live_gauges if name.endswith(f"_{victim}.db")]
    assert any("worker died; started another" in line for line in log)
    assert list(temp.glob("app-metrics-*")) == []


def crashing_worker(**kwargs: object) -> None:
    """Stands in for hypercorn's worker in the crash-loop test: dies at once."""
    sys.exit(3)


def test_workers_that_keep_dying_stop_the_server_with_a_failure(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from hypercorn.config import Config\n"
        "from app.workers import supervise\n"
        "from tests.test_faults import crashing_worker\n"
        "config = Config()\n"
        f"config.bind = ['127.0.0.1:{free_port()}']\n"
        "sys.exit(supervise(config, 2, None, target=crashing_worker))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=clean_environ(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stderr[-2000:]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_drains_readiness_first_while_serving_everything_else(
    migrated: str, tmp_path: Path, workers: str
) -> None:
    with running_service(
        tmp_path, DATABASE_URL=migrated, WORKERS=workers, DRAIN_SECONDS="4", SHUTDOWN_GRACE="5"
    ) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            await until_ready(client)
            service.process.terminate()
            # the word reaches each worker within its poll (0.2 s), later on a busy machine
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                async with httpx.AsyncClient(base_url=service.base, timeout=10) as fresh:
                    if (await fresh.get("/readyz")).status_code == 503:
                        break
            during = []
            for _ in range(5):
                # new connections each time: the listener is still open
                async with httpx.AsyncClient(base_url=service.base, timeout=10) as fresh:
                    ready = await fresh.get("/readyz")
                    during.append(
                        (
                            ready.status_code,
                            ready.json().get("code"),
                            (await fresh.get("/healthz")).status_code,
                            (await fresh.get("/api/v1/users?limit=1")).status_code,
                        )
                    )
                await asyncio.sleep(0.1)
        exit_code = await asyncio.to_thread(service.process.wait, 30)

    assert during == [(503, "draining", 200, 200)] * 5
    assert exit_code == 0
