"""`make bench-tail`: the upstream's tail and an upstream that is down, as a user meets them.

Three scenes, each against the loopback upstream stub (tools/upstream_stub.py on uvloop),
one worker per app, wrk from a separate process, calls counted at the stub:

- a heavy tail (1 call in 50 takes 1 s more, the rest 50 ms): the fan-out
  `/api/v1/posts?ids=1..10` with the cache and coalescing off, hedging on (`auto`) and
  off, against FastAPI + uvicorn on the same upstream, both with 200 upstream connections;
  p50, p99, p99.9 and upstream calls per request;
- a down upstream, refusing and silent: `GET /` once the breaker has opened (after a
  warm-up that opens it), with and without stale-if-error; calls that reached the host;
- an expired post with stale-while-revalidate (max-age=1, a 200 ms upstream): one post
  at 8 connections, on and off; calls at the stub.

Figures, never assertions; the rounds of `make bench` are not repeated here.

    python -m bench.tail [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.run import OURS, RESULTS, Server, Upstream, seed, start_server, wait_for, wrk
from tools.devdb import PrivateMariaDB
from tools.ports import free_port

REPO = Path(__file__).resolve().parent.parent
IDS = ",".join(str(n) for n in range(1, 11))
TAIL = "50/1"  # every 50th call takes 1 s more
DELAY = 0.05
LIKE_FOR_LIKE = {"UPSTREAM_CACHE": "off", "UPSTREAM_COALESCE": "false"}


class Stub(Upstream):
    """tools/upstream_stub.py on uvloop, in place of nginx."""

    def __init__(self, workdir: Path, delay: float = DELAY, tail: str = "0/0") -> None:
        super().__init__(workdir)
        self.delay = delay
        self.tail = tail

    def start(self) -> None:
        command = [
            sys.executable, "-m", "tools.upstream_stub", "--port", str(self.port), "--uvloop",
            "--delay", str(self.delay), "--tail", self.tail,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=REPO)
        wait_for(f"{self.base}/_stats", self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)

    def control(self, path: str) -> dict[str, int]:
        answer: dict[str, int] = httpx.get(f"{self.base}{path}", timeout=5).json()
        return answer


@dataclass
class Row:
    scene: str
    app: str
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    non_2xx: int
    errors: int
    upstream_calls: int
    calls_per_request: float
    hedges: str  # won/lost/skipped during the run, from this service's metrics; "-" for peers


def load(
    scene: str,
    app: str,
    server: Server,
    path: str,
    connections: int,
    seconds: int,
    count_calls: Callable[[], int],
) -> Row:
    """wrk against `path`; `count_calls()` says how many calls reached the host meanwhile."""
    ours = server.app == OURS
    before, hedged_before = count_calls(), hedges(server) if ours else (0, 0, 0)
    figures = wrk(server.base + path, connections, seconds)
    calls = count_calls() - before
    hedged = [after - earlier for after, earlier in zip(hedges(server), hedged_before, strict=True)]
    requests = figures["requests"]
    return Row(
        scene=scene,
        app=app,
        connections=connections,
        requests=requests,
        rps=round(requests / (figures["duration_us"] / 1e6), 1),
        p50_ms=round(figures["p50_us"] / 1000, 1),
        p99_ms=round(figures["p99_us"] / 1000, 1),
        p999_ms=round(figures["p999_us"] / 1000, 1),
        non_2xx=figures["status"],
        errors=figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        upstream_calls=calls,
        calls_per_request=round(calls / requests, 3) if requests else 0.0,
        hedges="/".join(str(n) for n in hedged) if ours else "-",
    )


def hedges(server: Server) -> tuple[int, int, int]:
    """upstream_hedges_total won, lost, skipped so far."""
    counted = dict.fromkeys(("won", "lost", "skipped"), 0)
    for line in httpx.get(f"{server.base}/metrics", timeout=5).text.splitlines():
        if line.startswith("upstream_hedges_total{"):
            outcome = line.split('"')[1]
            counted[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return counted["won"], counted["lost"], counted["skipped"]


def heavy_tail(database: PrivateMariaDB, workdir: Path, seconds: int, rows: list[Row]) -> None:
    stub = Stub(workdir, tail=TAIL)
    stub.start()
    try:
        # Room for hedges: at 8 connections 80 calls are in flight, and no hedge is sent
        # while every slot is taken; both apps get the same bound.
        bound = {"UPSTREAM_MAX_CONCURRENCY": "200", "BENCH_UPSTREAM_MAX_CONCURRENCY": "200"}
        apps = {
            "quart, hedging auto": (OURS, bound | LIKE_FOR_LIKE | {"UPSTREAM_HEDGE_AFTER": "auto"}),
            "quart, hedging off": (OURS, bound | LIKE_FOR_LIKE | {"UPSTREAM_HEDGE_AFTER": "off"}),
            "fastapi": ("fastapi", bound),
        }
        for name, (app, env) in apps.items():
            server = start_server(app, database, stub, workdir, extra_env=env)
            try:
                path = f"/api/v1/posts?ids={IDS}"
                for connections in (8, 64):
                    wrk(server.base + path, connections, 5)  # warm-up: `auto` learns the p95
                    row = load(
                        "heavy tail, fan-out x10", name, server, path, connections, seconds,
                        stub_calls(stub),
                    )  # fmt: skip
                    rows.append(row)
                    print(json.dumps(asdict(row)), flush=True)
            finally:
                server.stop()
    finally:
        stub.stop()


def stub_calls(stub: Stub) -> Callable[[], int]:
    return lambda: stub.control("/_stats")["calls"]


def host_calls(server: Server) -> int:
    """Upstream calls the service made (refused by its breaker not counted), from /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("upstream_calls_total{") and 'outcome="breaker_open"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def down(database: PrivateMariaDB, workdir: Path, seconds: int, rows: list[Row]) -> None:
    cases = [
        ("refusing", "0", "5/10s"),
        ("refusing", "300", "5/10s"),
        ("silent", "0", "5/10s"),
        ("silent", "300", "5/10s"),
        ("silent", "0", "off"),
    ]
    for how, stale, breaker in cases:
        stub = Stub(workdir, delay=0)
        stub.start()
        env = {"UPSTREAM_STALE_IF_ERROR": stale, "UPSTREAM_BREAKER": breaker}
        server = start_server(OURS, database, stub, workdir, extra_env=env)
        try:
            httpx.get(f"{server.base}/", timeout=10).raise_for_status()  # stored, for stale
            if how == "silent":
                stub.control("/_silent")
            else:
                stub.stop()  # its port now refuses
            wrk(
                f"{server.base}/", 8, 7
            )  # warm-up: long enough for five timeouts to open the breaker
            name = f"stale-if-error {stale}, breaker {breaker}"
            # silent: counted as they arrive at the stub; refusing: as the service sent them
            calls = stub_calls(stub) if how == "silent" else functools.partial(host_calls, server)
            row = load(f"upstream {how}, GET /", name, server, "/", 8, seconds, calls)
            rows.append(row)
            print(json.dumps(asdict(row)), flush=True)
        finally:
            server.stop()
            stub.stop()


def stale_while_revalidate(
    database: PrivateMariaDB, workdir: Path, seconds: int, rows: list[Row]
) -> None:
    stub = Stub(workdir, delay=0.2)
    stub.start()
    try:
        for window in ("60", "0"):
            env = {
                "UPSTREAM_STALE_WHILE_REVALIDATE": window,
                # posts fresh for 1 s, with an ETag: each second the post expires
                "UPSTREAM_BASE_URL": f"{stub.base}/cached/1",
            }
            server = start_server(OURS, database, stub, workdir, extra_env=env)
            path = "/api/v1/posts/1"
            try:
                wrk(server.base + path, 8, 2)
                row = load(
                    "expiring post (max-age=1, 200 ms upstream)",
                    f"stale-while-revalidate {window}", server, path, 8, seconds,
                    stub_calls(stub),
                )  # fmt: skip
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
            finally:
                server.stop()
    finally:
        stub.stop()


def render(rows: list[Row], started: str, machine: str, seconds: int) -> str:
    lines = [
        f"# The upstream's tail and an upstream that is down, {started}",
        "",
        f"Machine: {machine}. One worker per app, wrk (1 thread) from a separate process, "
        f"{seconds} s per run after a warm-up; upstream calls counted at the stub (the down "
        "refusing scene: calls the service sent, from its metrics).",
        "",
        "| scene | app | conns | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | errors "
        "| upstream calls | calls/request | hedges won/lost/skipped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.scene} | {r.app} | {r.connections} | {r.rps:.0f} | {r.p50_ms} | {r.p99_ms} "
            f"| {r.p999_ms} | {r.non_2xx} | {r.errors} | {r.upstream_calls} "
            f"| {r.calls_per_request} | {r.hedges} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 s per run")
    parser.add_argument("--scenes", default="tail,down,swr", help="comma-separated subset")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3
    if not (shutil.which("wrk") or Path("/usr/sbin/wrk").exists()):
        sys.exit("wrk not found: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="bench-tail-"))
    database = PrivateMariaDB(workdir / "mariadb", port=free_port(), database="bench")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    rows: list[Row] = []
    scenes = args.scenes.split(",")
    try:
        database.start()
        seed(database)
        if "tail" in scenes:
            heavy_tail(database, workdir, args.seconds, rows)
        if "down" in scenes:
            down(database, workdir, args.seconds, rows)
        if "swr" in scenes:
            stale_while_revalidate(database, workdir, args.seconds, rows)
    finally:
        database.stop()
    table = render(rows, started, machine, args.seconds)
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tail.md").write_text(table)
    (RESULTS / "tail.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print("written: bench/results/tail.md, bench/results/tail.json")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
