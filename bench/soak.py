"""`make soak`: a bounded soak of the service under mixed traffic; reports memory and errors.

Starts the same pieces as the benchmark (nginx upstream at 50 ms, private MariaDB with
100 users), serves the app as `make run` does, drives it with wrk at 32 connections for
60 s (reads of every route and one write in ten), samples the server's RSS every 5 s.

    python -m bench.soak [--seconds 60] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.run import REPO, RESULTS, Upstream, seed, start_server, wrk
from tools.devdb import PrivateMariaDB
from tools.ports import free_port

TOKEN = "soak-token"  # noqa: S105 (a throwaway token for a loopback-only run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    database = PrivateMariaDB(workdir / "mariadb", port=free_port(), database="soak")
    upstream = Upstream(workdir)
    try:
        database.start()
        seed(database)
        upstream.start()
        server = start_server(
            "quart",
            database,
            upstream,
            workdir,
            extra_env={
                "API_TOKEN": TOKEN,
                # one client address sends every write here; the limit is not what is soaked
                "WRITE_RATE_LIMIT": "1000000/minute",
            },
        )
        try:
            samples: list[tuple[float, float]] = []
            stop = threading.Event()

            def sample() -> None:
                started = time.monotonic()
                while not stop.wait(5):
                    samples.append((round(time.monotonic() - started, 1), server.rss_mb()))

            script = REPO / "bench" / "soak.lua"
            env = {**os.environ, "SOAK_TOKEN": TOKEN}
            wrk(server.base, args.connections, 5, script, env)  # warm-up
            rss_start = server.rss_mb()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            figures = wrk(server.base, args.connections, args.seconds, script, env)
            stop.set()
            sampler.join()
            rss_end = server.rss_mb()
            log_text = (workdir / "quart.log").read_text()
        finally:
            server.stop()
    finally:
        upstream.stop()
        database.stop()

    errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    report = {
        "seconds": args.seconds,
        "connections": args.connections,
        "requests": figures["requests"],
        "rps": round(figures["requests"] / (figures["duration_us"] / 1e6), 1),
        "socket_errors": errors,
        "non_2xx": figures["status"],
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_samples": samples,
        "server_errors_logged": log_text.count('"level": "ERROR"'),
        "loop_blocked_logged": log_text.count("event loop blocked"),
    }
    lines = [
        f"# Soak: {args.seconds} s of mixed traffic at {args.connections} connections",
        "",
        "| requests | req/s | p50 ms | p99 ms | socket errors | non-2xx "
        "| RSS start MB | RSS end MB | growth MB | ERROR lines | loop blocked |",
        "|" + " ---: |" * 11,
        "| "
        + " | ".join(
            [
                str(report["requests"]),
                f"{report['rps']:.0f}",
                f"{report['p50_ms']:.1f}",
                f"{report['p99_ms']:.1f}",
                str(errors),
                str(report["non_2xx"]),
                f"{rss_start:.1f}",
                f"{rss_end:.1f}",
                f"{rss_end - rss_start:+.1f}",
                str(report["server_errors_logged"]),
                str(report["loop_blocked_logged"]),
            ]
        )
        + " |",
        "",
        "RSS every 5 s (s, MB): " + ", ".join(f"{t:.0f}: {mb:.1f}" for t, mb in samples),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text(text)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
