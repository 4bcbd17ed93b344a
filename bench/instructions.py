"""`make bench-instructions`: CPU instructions per request, counted by valgrind's callgrind.

Requests per second on a shared machine swing by a third from one run to the next; an
instruction count does not (the same build given the same requests counts the same,
within a percent, whatever else the machine is doing). Each app is started under
callgrind (about fifty times slower, hence a few hundred requests per job), warmed up,
its counters zeroed, sent N requests, 8 at a time, from this process, and its counters
dumped: instructions per request is the dump's total over N. Only the server process is
counted: not the upstream, not MariaDB, not the client. The Flask original is left out
(gunicorn's worker is a child process). Fewer instructions per request is what lets one
process serve more; the wall-clock figures stay in `make bench`.

    python -m bench.instructions [--apps quart,fastapi,quart-on-uvicorn] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.run import (
    CACHED,
    FLOOR,
    JOBS,
    LIKE_FOR_LIKE,
    OURS,
    REPO,
    RESULTS,
    SAME_APP_ON_UVICORN,
    TRACED,
    TRACED_SAMPLED,
    TRACING,
    Server,
    Upstream,
    seed,
    start_server,
    wait_for,
)
from tools.devdb import PrivateMariaDB
from tools.ports import free_port

APPS = (OURS, LIKE_FOR_LIKE, *TRACING, CACHED, "fastapi", FLOOR, SAME_APP_ON_UVICORN)
AT_ONCE = 8
WARM_UP = 30
IDLE_SECONDS = 10.0
VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"


async def drive(url: str, requests: int) -> None:
    """`requests` GETs of `url`, AT_ONCE at a time; every answer must be a 200."""
    limits = httpx.Limits(max_connections=AT_ONCE)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        slots = asyncio.Semaphore(AT_ONCE)

        async def one() -> int:
            async with slots:
                return (await client.get(url)).status_code

        statuses = await asyncio.gather(*(one() for _ in range(requests)))
    refused = [status for status in statuses if status != 200]
    if refused:
        sys.exit(f"{url}: {len(refused)} answers were not 200 (first: {refused[0]})")


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run([CALLGRIND_CONTROL, option, str(pid)], check=True, capture_output=True)


def dumped_total(outdir: Path, pid: int, before: set[Path]) -> int:
    """The instruction total of the dump callgrind_control -d just asked pid to write."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for dump in set(outdir.glob(f"callgrind.{pid}.*")) - before:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    sys.exit(f"callgrind wrote no dump for pid {pid}")


def counted(server: Server, outdir: Path, work: Callable[[], object]) -> tuple[int, float]:
    """The instructions the server spends while `work` runs, and the seconds it took."""
    pid = server.process.pid
    callgrind_control("-z", pid)
    began = time.monotonic()
    work()
    took = time.monotonic() - began
    before = set(outdir.glob(f"callgrind.{pid}.*"))
    callgrind_control("-d", pid)
    return dumped_total(outdir, pid, before), took


def count(
    server: Server, path: str, requests: int, outdir: Path, idle_per_second: float | None
) -> tuple[float, float]:
    """Instructions per request; for a traced app (`idle_per_second` measured), spans
    per request too. A traced app's window stays open until its last batch of spans has
    left (the export is part of a request's cost), less what the process spends idle
    meanwhile; the warm-up's spans leave before the window opens."""
    url = server.base + path
    asyncio.run(drive(url, WARM_UP))
    if idle_per_second is None:
        total, _ = counted(server, outdir, lambda: asyncio.run(drive(url, requests)))
        return total / requests, 0.0
    spans_before = settled_spans()
    spans_after, waited = spans_before, 0.0

    def drive_and_wait() -> None:
        nonlocal spans_after, waited
        asyncio.run(drive(url, requests))
        began = time.monotonic()
        spans_after = settled_spans()
        waited = time.monotonic() - began

    total, _ = counted(server, outdir, drive_and_wait)
    idle = idle_per_second * waited
    return (total - idle) / requests, (spans_after - spans_before) / requests


def idle_cost(server: Server, outdir: Path) -> float:
    """Instructions a second the server spends with nothing to do (its loop monitor, the
    span processor's timer)."""
    total, took = counted(server, outdir, lambda: time.sleep(IDLE_SECONDS))
    return total / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset")
    parser.add_argument("--requests", type=int, default=300, help="per job; fan-outs get 1/5")
    args = parser.parse_args()
    if not (Path(VALGRIND).exists() and Path(CALLGRIND_CONTROL).exists()):
        sys.exit("valgrind not found: apt-get install valgrind")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    apps = [app for app in APPS if app in args.apps.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    database = PrivateMariaDB(workdir / "mariadb", port=free_port(), database="bench")
    upstream = Upstream(workdir)
    prefix = (VALGRIND, "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.%p")
    # under callgrind every tick of the loop monitor would look like a blocked loop
    slow = {"LOOP_BLOCK_THRESHOLD": "60", "UPSTREAM_TIMEOUT": "60"}
    counts: dict[str, dict[str, float]] = {}
    spans: dict[str, dict[str, float]] = {}  # per request, by app and job, traced apps
    receiver: subprocess.Popen[bytes] | None = None
    try:
        database.start()
        seed(database)
        upstream.start()
        if set(TRACING) & set(apps):
            receiver, endpoint = start_receiver()
            os.environ["BENCH_OTLP_ENDPOINT"] = endpoint
        for app in apps:
            server = start_server(app, database, upstream, workdir, slow, prefix, 600)
            try:
                idle = idle_cost(server, workdir) if app in TRACING else None
                for job in JOBS:
                    if app not in job.paths or job.name == "fan-out x10 @64":
                        continue  # the same route as at 8; how many at once barely counts
                    name = job.name.rsplit(" @", 1)[0]
                    n = args.requests // 5 if "fan-out" in name else args.requests
                    per_request, spans_per_request = count(server, job.paths[app], n, workdir, idle)
                    counts.setdefault(name, {})[app] = per_request
                    if app in TRACING:
                        spans.setdefault(app, {})[name] = spans_per_request
                    print(json.dumps({"app": app, "job": name, "instructions": per_request}))
            finally:
                server.stop()
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
        upstream.stop()
        database.stop()

    table = render(counts, apps, args.requests, started, spans)
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "instructions.md").write_text(table)
    (RESULTS / "instructions.json").write_text(json.dumps(counts, indent=2) + "\n")
    print("written: bench/results/instructions.md, bench/results/instructions.json")
    shutil.rmtree(workdir, ignore_errors=True)


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    """tools/otlp_receiver.py as a process: the traced app's collector."""
    port = free_port()
    command = [sys.executable, "-m", "tools.otlp_receiver", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(f"{endpoint}/_stats", process)
    return process, endpoint


def spans_received() -> int:
    stats = httpx.get(f"{os.environ['BENCH_OTLP_ENDPOINT']}/_stats", timeout=5).json()
    received: int = stats["spans"]
    return received


def settled_spans() -> int:
    """Spans received once the last batch is in: the count has not moved for longer than
    the SDK's 5 s between batches (under callgrind its thread is slow too)."""
    received, still_since = spans_received(), time.monotonic()
    deadline = still_since + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        now = spans_received()
        if now != received:
            received, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 7:
            break
    return received


def render(
    counts: dict[str, dict[str, float]],
    apps: list[str],
    requests: int,
    started: str,
    spans: dict[str, dict[str, float]],
) -> str:
    lines = [
        f"# Instructions per request, {started}",
        "",
        f"Counted by valgrind's callgrind in the server process only, over {requests} "
        f"requests per job ({requests // 5} for the fan-out), {AT_ONCE} at a time, after "
        f"{WARM_UP} to warm up. Millions of instructions; fewer is better.",
        "",
        "| job | " + " | ".join(apps) + " |",
        "| --- |" + " ---: |" * len(apps),
    ]
    for job, by_app in counts.items():
        cells = [f"{by_app[app] / 1e6:.2f}" if app in by_app else "-" for app in apps]
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    if spans and LIKE_FOR_LIKE in apps:
        lines += [
            "",
            "Tracing on against off, per request and per span. Spans are exported to a local",
            f"OTLP receiver; {TRACED} samples every request, {TRACED_SAMPLED} one in",
            "twenty (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `_ARG=0.05`). A traced",
            "app's count runs until its last batch has left, less what it spends idle meanwhile:",
            "",
            "| app | job | spans per request | cost per request | per span | change |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for app, by_job in spans.items():
            for job, per_request in by_job.items():
                on, off = counts[job].get(app), counts[job].get(LIKE_FOR_LIKE)
                if on is None or off is None:
                    continue
                cost = on - off
                # sampled one in twenty, the cost is mostly that of the traces not kept
                per_span = f"{cost / per_request / 1e3:.0f} k" if app == TRACED else "-"
                lines.append(
                    f"| {app} | {job} | {per_request:.2f} | {cost / 1e6:.2f} M | {per_span} "
                    f"| {cost / off:+.1%} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
