"""`make cluster-drill`: the SPEC's drills against `make cluster`, a figure for each.

Starts its own cluster (3 instances, WRITE_RATE_LIMIT=30/minute, ports of its own), runs:

- rolling restart: each instance stopped (SIGTERM: it drains, HAProxy takes it out) and
  started again in turn, under steady GET traffic through HAProxy: 0 failed requests;
- SIGKILL of one instance under GET traffic: 0 failed GETs (HAProxy retries the failed
  connection on another instance); restarted, it rejoins;
- the budget across instances: 90 writes from one client through HAProxy admit exactly 30;
- forged X-Forwarded-For straight to an instance (from 127.0.0.2, not the balancer):
  the 30 writes of a budget, then none, whatever address each claims;
- the Redis store stopped: writes keep working (admitted, counted in
  rate_limit_store_errors_total);
- the database away (MariaDB frozen with SIGSTOP for 12 s) under mixed GETs through
  HAProxy: every instance turns unready and HAProxy sends to them all anyway, so `/` and
  the posts answer 200 throughout, the database routes 200 or the instance's 503
  problem, never HAProxy's own page, and no answer is cut;

prints one line per drill, stops the cluster, and exits 1 if any drill failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable

import httpx

from tools import REPO
from tools.cluster import Cluster, read_pid
from tools.devdb import PrivateMariaDB
from tools.ports import free_port
from tools.upstream_stub import running_stub

BUDGET = 30


async def traffic(base: str, stop: asyncio.Event, results: list[int], workers: int = 8) -> None:
    """Steady mixed GETs through the balancer; each answer's status (-1: no answer)."""
    paths = ["/api/v1/users?limit=5", "/db", "/healthz", "/api/v1/users/1"]

    async def worker(n: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            i = n
            while not stop.is_set():
                try:
                    status = (await client.get(paths[i % len(paths)])).status_code
                except httpx.HTTPError:
                    status = -1
                results.append(status)
                i += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(n) for n in range(workers)))


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1."""
    while True:
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


def failed(results: list[int]) -> int:
    return sum(1 for status in results if status not in (200, 404))


def failures(results: list[int]) -> str:
    """What the failed answers were, for the report: `(502 x1, no answer x1)`."""
    counted = collections.Counter(status for status in results if status not in (200, 404))
    named = [f"{'no answer' if status == -1 else status} x{n}" for status, n in counted.items()]
    return f" ({', '.join(named)})" if named else ""


async def wait_ready(url: str) -> None:
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)


def gone(pid: int) -> bool:
    try:  # our own child (the drill started it): reap it, or it lingers as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_gone(pid: int) -> None:
    async with asyncio.timeout(30):
        while not gone(pid):  # noqa: ASYNC110 (another process: nothing to await)
            await asyncio.sleep(0.1)


async def rejoin(cluster: Cluster, n: int, port: int, database_url: str) -> None:
    cluster.start_instance(n, port, database_url)
    await wait_ready(f"http://127.0.0.1:{port}/readyz")
    await asyncio.sleep(2.5)  # HAProxy: one good check every second, rise 1


async def under_traffic(base: str, action: Awaitable[None]) -> tuple[int, int, str]:
    results: list[int] = []
    stop = asyncio.Event()
    runner = asyncio.create_task(traffic(base, stop, results))
    await asyncio.sleep(1)
    await action
    await asyncio.sleep(1)
    stop.set()
    await runner
    return len(results), failed(results), failures(results)


async def writes(base: str, count: int, **client_options: object) -> list[int]:
    token = (REPO / ".run" / "drill" / "api_token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    statuses = []
    transport = httpx.AsyncHTTPTransport(**client_options)  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=base, timeout=10, transport=transport) as client:
        for n in range(count):
            forged = {"X-Forwarded-For": f"203.0.113.{n % 250 + 1}"}
            response = await client.delete(
                f"/api/v1/users/{10**9 + n}", headers={**headers, **forged}
            )
            statuses.append(response.status_code)
    return statuses


DATABASE_AWAY = 12.0
NEEDS_NO_DATABASE = ("/", "/api/v1/posts/5")
NEEDS_THE_DATABASE = ("/db", "/api/v1/users?limit=5")


async def database_away(base: str, database: PrivateMariaDB) -> tuple[bool, str]:
    """Mixed GETs through HAProxy while MariaDB is frozen, then back."""
    pid = database.pid()
    assert pid is not None
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    stop = asyncio.Event()

    async def worker(path: str) -> None:
        # an answer may take a while (each instance waits DB_POOL_TIMEOUT): not cut
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            while not stop.is_set():
                asked = time.monotonic()
                try:
                    answer = await client.get(path)
                    kind = answer.headers.get("Content-Type", "").split(";")[0]
                    seen[path, f"{answer.status_code} {kind}"] += 1
                except httpx.HTTPError as error:
                    waited = time.monotonic() - asked
                    seen[path, f"no answer ({type(error).__name__} after {waited:.0f} s)"] += 1
                await asyncio.sleep(0.02)

    paths = NEEDS_NO_DATABASE + NEEDS_THE_DATABASE
    runners = [asyncio.create_task(worker(path)) for path in paths for _ in range(2)]
    await asyncio.sleep(1)
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(DATABASE_AWAY)
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(4)
    stop.set()
    await asyncio.gather(*runners)
    allowed = {
        **{path: {"200 application/json"} for path in NEEDS_NO_DATABASE},
        **{
            path: {"200 application/json", "503 application/problem+json"}
            for path in NEEDS_THE_DATABASE
        },
    }
    passed = all(outcome in allowed[path] for path, outcome in seen)
    figures = "; ".join(
        f"{path} " + ", ".join(f"{outcome} x{n}" for (p, outcome), n in seen.items() if p == path)
        for path in paths
    )
    return passed, figures


async def drills(cluster: Cluster, database_url: str, database: PrivateMariaDB) -> bool:
    base = f"http://{cluster.host}:{cluster.port}"
    ports = cluster.instance_ports
    ok = True

    def report(name: str, passed: bool, figures: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {figures}", flush=True)

    async def rolling() -> None:
        for n, port in enumerate(ports, start=1):
            pid = read_pid(cluster.directory / f"instance-{n}.pid")
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            await wait_gone(pid)
            await rejoin(cluster, n, port, database_url)

    sent, bad, how = await under_traffic(base, rolling())
    report("rolling restart", bad == 0, f"{sent} GETs, {bad} failed{how}")

    async def kill_one() -> None:
        pid = read_pid(cluster.directory / "instance-2.pid")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_gone(pid)
        await asyncio.sleep(3)
        await rejoin(cluster, 2, ports[1], database_url)

    sent, bad, how = await under_traffic(base, kill_one())
    # An answer the killed instance had begun to write is cut where it stood: HAProxy has
    # forwarded its first bytes and can no longer retry it (hypercorn writes the head and
    # the body of an answer separately). No balancer can hide that: one per kill at most.
    cut_mid_answer = how == " (no answer x1)"
    report(
        "SIGKILL one instance",
        bad == 0 or cut_mid_answer,
        f"{sent} GETs, {bad} failed{how}; it rejoined"
        + (" (one answer cut by the kill as it was written: allowed)" if cut_mid_answer else ""),
    )

    # from 127.0.0.4: on one machine 127.0.0.1 is the balancer's own, trusted, address
    statuses = await writes(base, 3 * BUDGET, local_address="127.0.0.4")
    admitted = statuses.count(404)
    report(
        "budget across instances",
        admitted == BUDGET and statuses.count(429) == 2 * BUDGET,
        f"{len(statuses)} writes through HAProxy, {admitted} admitted (budget {BUDGET})",
    )

    statuses = await writes(f"http://127.0.0.1:{ports[0]}", BUDGET + 10, local_address="127.0.0.2")
    admitted = statuses.count(404)
    report(
        "forged X-Forwarded-For, straight to an instance",
        admitted == BUDGET,
        f"{len(statuses)} writes each claiming another address, {admitted} admitted",
    )

    redis_pid = read_pid(cluster.directory / "redis.pid")
    assert redis_pid is not None
    os.kill(redis_pid, signal.SIGTERM)
    await wait_gone(redis_pid)
    statuses = await writes(base, 10, local_address="127.0.0.3")
    async with httpx.AsyncClient(timeout=5) as client:
        metrics = (await client.get(f"http://127.0.0.1:{ports[0]}/metrics")).text
    counted = any(
        line.startswith("rate_limit_store_errors_total ") and float(line.split()[1]) > 0
        for line in metrics.splitlines()
    )
    report(
        "Redis store stopped",
        statuses.count(404) == 10 and counted,
        f"10 writes, {statuses.count(404)} admitted, store errors counted: {counted}",
    )
    passed, figures = await database_away(base, database)
    report(f"database away {DATABASE_AWAY:.0f} s", passed, figures)

    if os.geteuid() != 0:
        print("SKIP  partition: needs root for a network namespace", flush=True)
        return ok
    passed, figures = await partition(cluster, database_url)
    report("partition from the database", passed, figures)
    return ok


NETNS = f"qad-drill-{os.getpid()}"
LB_HOST, LB_NS, DB_HOST, DB_NS = "10.231.1.1", "10.231.1.2", "10.231.2.1", "10.231.2.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


async def relay(listen_host: str, target_port: int) -> asyncio.Server:
    """A TCP relay from an address on the database link to the MariaDB on 127.0.0.1."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer))

    return await asyncio.start_server(handle, listen_host, 0)


async def partition(cluster: Cluster, database_url: str) -> tuple[bool, str]:
    """A fourth instance in a network namespace of its own, its database link cut and back."""
    ip("netns", "add", NETNS)
    try:
        ip("link", "add", "qad-lb-h", "type", "veth", "peer", "name", "qad-lb-n")
        ip("link", "add", "qad-db-h", "type", "veth", "peer", "name", "qad-db-n")
        for name, address in (("qad-lb", (LB_HOST, LB_NS)), ("qad-db", (DB_HOST, DB_NS))):
            ip("link", "set", f"{name}-n", "netns", NETNS)
            ip("addr", "add", f"{address[0]}/30", "dev", f"{name}-h")
            ip("link", "set", f"{name}-h", "up")
            ip("netns", "exec", NETNS, "ip", "addr", "add", f"{address[1]}/30", "dev", f"{name}-n")
            ip("netns", "exec", NETNS, "ip", "link", "set", f"{name}-n", "up")
        ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        database_port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        server = await relay(DB_HOST, database_port)
        relay_port = server.sockets[0].getsockname()[1]
        user_part, rest = database_url.split("@", 1)
        inside_url = f"{user_part}@{DB_HOST}:{relay_port}/{rest.split('/', 1)[1]}"
        port = free_port()
        process = start_partitioned(cluster, inside_url, port)
        try:
            await wait_ready(f"http://{LB_NS}:{port}/readyz")
            cluster.start_haproxy(extra={"partitioned": f"{LB_NS}:{port}"})
            await asyncio.sleep(2.5)
            base = f"http://{cluster.host}:{cluster.port}"

            during, counts = 0, []

            async def cut_and_heal() -> None:
                nonlocal during
                counts.append(served(cluster))  # joined, before the cut
                ip("netns", "exec", NETNS, "ip", "link", "set", "qad-db-n", "down")
                await asyncio.sleep(4)  # HAProxy: two failed checks a second apart
                async with httpx.AsyncClient(timeout=5) as client:
                    during = (await client.get(f"http://{LB_NS}:{port}/readyz")).status_code
                counts.append(served(cluster))
                await asyncio.sleep(3)
                counts.append(served(cluster))  # out of the balancer: no new requests
                ip("netns", "exec", NETNS, "ip", "link", "set", "qad-db-n", "up")
                await wait_ready(f"http://{LB_NS}:{port}/readyz")
                await asyncio.sleep(4)
                counts.append(served(cluster))  # back in

            sent, bad, how = await under_traffic(base, cut_and_heal())
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 20)
            server.close()
            cluster.start_haproxy()
        before, cut, out, back = counts
        passed = bad == 0 and during == 503 and out == cut and back > out
        return passed, (
            f"{sent} GETs, {bad} failed{how}; its /readyz while cut off: {during}; requests it"
            f" served (health checks aside) at the cut {before}, 4 s later {cut}, 7 s later"
            f" {out}, 4 s after the link came back {back}"
        )
    finally:
        remove_namespace()


def start_partitioned(cluster: Cluster, database_url: str, port: int) -> subprocess.Popen[bytes]:
    token = (cluster.directory / "api_token").read_text().strip()
    with (cluster.directory / "instance-p.log").open("ab") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-m", "app"],
            env={
                **os.environ, "DATABASE_URL": database_url, "HOST": LB_NS, "PORT": str(port),
                "MIGRATE_ON_START": "false", "TRUSTED_PROXIES": f"{LB_HOST}/32",
                "DB_QUERY_TIMEOUT": "2", "DB_POOL_TIMEOUT": "1", "API_TOKEN": token,
            },
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,
        )  # fmt: skip


def remove_namespace() -> None:
    for link in ("qad-lb-h", "qad-db-h"):
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "del", NETNS], check=False)


def served(cluster: Cluster) -> int:
    """Requests the partitioned instance has answered, the balancer's health checks aside."""
    path = cluster.directory / "instance-p.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if '"app.access"' in line and '"/readyz"' not in line)


def main() -> None:
    directory = REPO / ".run" / "drill"
    database = PrivateMariaDB(directory / "mariadb", port=free_port(), database="drill")
    cluster = Cluster(
        directory=directory,
        host="127.0.0.1",
        port=free_port(),
        instances=3,
        first_instance_port=free_ports_in_a_row(3),
        redis_port=free_port(),
        cache_redis_port=free_port(),
    )
    os.environ.pop("API_TOKEN", None)
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "upstream.log").open("ab") as log, running_stub(log=log) as upstream_base:
        os.environ.update(
            {
                "WRITE_RATE_LIMIT": f"{BUDGET}/minute",
                "DRAIN_SECONDS": "3",
                "UPSTREAM_BASE_URL": upstream_base,
            }
        )
        try:
            database.start()
            cluster.start(database.url)
            ok = asyncio.run(drills(cluster, database.url, database))
        finally:
            cluster.stop()
            time.sleep(4)  # the instances drain before they stop
            database.stop()
    print(f"drills done in {time.monotonic() - started:.0f} s", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
