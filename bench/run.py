"""`make bench`: this service against the blog's Flask original and FastAPI + uvicorn.

Everything runs on loopback on this machine: an upstream (nginx with the echo module,
answering every post after a fixed 50 ms), a private MariaDB holding 100 users, and each
app in turn with one worker, driven by wrk from a separate process after a warm-up. The
apps are interleaved over the rounds; the table reports medians across rounds and the
ratio of this service to each peer and to a bare Quart app (the floor) per round. This
service also runs with its upstream cache and coalescing off (like for like with the
peers) and against an upstream whose posts may be cached for 60 s. Figures, never
assertions.

    python -m bench.run [--rounds 2] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tools.devdb import PrivateMariaDB
from tools.ports import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
UPSTREAM_DELAY = 0.05
FAN_OUT = 10
USERS = 100
CONCURRENCY_LIMIT = 100  # UPSTREAM_MAX_CONCURRENCY, raised to the peers' connection limit

OURS = "quart"
# This service again, with its upstream cache and request coalescing off: what it does
# when it does what the peers do (an app without those settings ignores them).
LIKE_FOR_LIKE = "quart-like-for-like"
# This service as shipped, its upstream sending each post with max-age=60 and an ETag.
CACHED = "quart-cached-60"
VARIANTS = (LIKE_FOR_LIKE, CACHED)
# Like for like with tracing on, every request sampled, spans sent to a local OTLP
# receiver (BENCH_OTLP_ENDPOINT): for `make bench-instructions` only.
TRACED = "quart-like-for-like-traced"
# The same, sampling one trace in twenty (what docs/operations.md suggests for a busy service).
TRACED_SAMPLED = "quart-like-for-like-traced-5pct"
TRACING = (TRACED, TRACED_SAMPLED)
PEERS = ("fastapi", "flask-blog")
# A bare Quart app served with this service's hypercorn settings: not a peer, the floor.
FLOOR = "quart-floor"
# This very app under uvicorn instead of hypercorn: not a peer, the measure of hypercorn.
SAME_APP_ON_UVICORN = "quart-on-uvicorn"
APPS = (OURS, *VARIANTS, *PEERS, FLOOR, SAME_APP_ON_UVICORN)
IDS = ",".join(str(n) for n in range(1, FAN_OUT + 1))


@dataclass(frozen=True)
class Job:
    name: str
    connections: int
    paths: dict[str, str]  # app -> path; an app without one skips the job


def _ours_and_reference(paths: dict[str, str]) -> dict[str, str]:
    if OURS not in paths:
        return paths
    return {**paths, **dict.fromkeys((*VARIANTS, *TRACING, SAME_APP_ON_UVICORN), paths[OURS])}


_JOBS = (
    Job(
        "fan-out x10 @8",
        8,
        {
            OURS: f"/api/v1/posts?ids={IDS}",
            "fastapi": f"/api/v1/posts?ids={IDS}",
            "flask-blog": "/",
            FLOOR: f"/api/v1/posts?ids={IDS}",
        },
    ),
    Job(
        "fan-out x10 @64",
        64,
        {
            OURS: f"/api/v1/posts?ids={IDS}",
            "fastapi": f"/api/v1/posts?ids={IDS}",
            "flask-blog": "/",
            FLOOR: f"/api/v1/posts?ids={IDS}",
        },
    ),
    Job(
        "users?limit=50 @64",
        64,
        {OURS: "/api/v1/users?limit=50", "fastapi": "/api/v1/users?limit=50"},
    ),
    Job("/db @64", 64, {OURS: "/db", "fastapi": "/db", "flask-blog": "/db", FLOOR: "/db"}),
    Job(
        "/healthz @64",
        64,
        {OURS: "/healthz", "fastapi": "/healthz", "flask-blog": "/healthz", FLOOR: "/healthz"},
    ),
)
JOBS = tuple(Job(j.name, j.connections, _ours_and_reference(j.paths)) for j in _JOBS)


@dataclass
class Run:
    app: str
    job: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    rss_mb: float


@dataclass
class Report:
    started: str
    machine: str
    rounds: int
    seconds: int
    upstream: dict[str, float]
    runs: list[Run] = field(default_factory=list)


# --- the pieces on loopback -----------------------------------------------------------


class Upstream:
    """nginx + echo: a C server, so the upstream is never what limits the apps."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        template = (REPO / "bench" / "upstream_nginx.conf").read_text()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            template.format(module=ECHO_MODULE, port=self.port, delay=UPSTREAM_DELAY, dir=self.dir)
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.dir)])
        wait_for(f"{self.base}/ping")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(timeout=10)


@dataclass
class Server:
    app: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory of the server and its children (gunicorn's worker)."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        total_kb = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        return total_kb / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    app: str,
    database: PrivateMariaDB,
    upstream: Upstream,
    logdir: Path,
    extra_env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    ready_within: float = 30,
) -> Server:
    """Start `app` on a free port; `prefix` runs it under another program (valgrind)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "API_TOKEN"}}
    env["PYTHONPATH"] = str(REPO)
    db_env = {
        "BENCH_DB_HOST": "127.0.0.1",
        "BENCH_DB_PORT": str(database.port),
        "BENCH_DB_USER": database.user,
        "BENCH_DB_PASSWORD": database.password,
        "BENCH_DB_NAME": database.database,
    }
    if app in (OURS, *VARIANTS, *TRACING, SAME_APP_ON_UVICORN):
        # OURS: exactly what `make run` serves, settings from the environment
        command = [sys.executable, "-m", "app"]
        if app == SAME_APP_ON_UVICORN:
            command = [
                sys.executable, "-m", "uvicorn", "app.asgi:app", "--port", str(port),
                "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--backlog", "2048", "--log-level", "warning",
            ]  # fmt: skip
        env |= {
            "DATABASE_URL": database.url,
            "UPSTREAM_BASE_URL": upstream.base,
            "UPSTREAM_MAX_CONCURRENCY": str(CONCURRENCY_LIMIT),
            "PORT": str(port),
        }
        if app in (LIKE_FOR_LIKE, *TRACING):
            env |= {"UPSTREAM_CACHE": "off", "UPSTREAM_COALESCE": "false"}
        if app in TRACING:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = os.environ["BENCH_OTLP_ENDPOINT"]
        if app == TRACED_SAMPLED:
            env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
            env |= {"OTEL_TRACES_SAMPLER_ARG": "0.05"}
        elif app == CACHED:  # the location of bench/upstream_nginx.conf with caching headers
            env["UPSTREAM_BASE_URL"] = f"{upstream.base}/max-age-60"
    elif app == "fastapi":
        command = [
            sys.executable, "-m", "uvicorn", "bench.peers.fastapi_app:app", "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--backlog", "2048", "--log-level", "warning",
        ]  # fmt: skip
        env |= db_env | {
            "BENCH_UPSTREAM_BASE_URL": upstream.base,
            "BENCH_UPSTREAM_MAX_CONCURRENCY": str(CONCURRENCY_LIMIT),
        }
    elif app == FLOOR:
        # hypercorn configured by the service's own code: see the peer's main()
        command = [sys.executable, "-m", "bench.peers.quart_floor"]
        env |= db_env | {
            # read by the service's settings, which the floor's hypercorn settings come from
            "DATABASE_URL": database.url,
            "BENCH_UPSTREAM_BASE_URL": upstream.base,
            "BENCH_UPSTREAM_MAX_CONCURRENCY": str(CONCURRENCY_LIMIT),
            "PORT": str(port),
        }
    else:
        command = [
            sys.executable, "-m", "gunicorn", "bench.peers.flask_blog:app", "-b",
            f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", "32",
            "--backlog", "2048", "--log-level", "warning",
        ]  # fmt: skip
        urls = ",".join(f"{upstream.base}/posts/{n}" for n in range(1, FAN_OUT + 1))
        env |= db_env | {"BENCH_UPSTREAM_URLS": urls}
    env |= extra_env or {}
    log = (logdir / f"{app}.log").open("ab")
    process = subprocess.Popen([*prefix, *command], env=env, cwd=REPO, stdout=log, stderr=log)
    server = Server(app, port, process)
    wait_for(f"{server.base}/healthz", process, timeout=ready_within)
    return server


def wait_for(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not answer within {timeout:.0f} s")


def seed(database: PrivateMariaDB) -> None:
    from pydantic import MySQLDsn, TypeAdapter

    from app.data.database import connect
    from app.data.migrate import migrate

    async def run() -> None:
        url = TypeAdapter(MySQLDsn).validate_python(database.url)
        await migrate(url)
        connection = await connect(url)
        async with connection.cursor() as cursor:
            await cursor.execute("DELETE FROM users")
            await cursor.executemany(
                "INSERT INTO users (name, email) VALUES (%s, %s)",
                [(f"User {n}", f"user{n}@example.com") for n in range(1, USERS + 1)],
            )
        await connection.ensure_closed()

    import asyncio

    asyncio.run(run())


# --- load -------------------------------------------------------------------------------


def wrk(
    url: str,
    connections: int,
    seconds: int,
    script: Path = REPO / "bench" / "report.lua",
    env: dict[str, str] | None = None,
) -> dict[str, int]:
    """Drive `url` with wrk (one thread) and return report.lua's JSON summary."""
    command = [
        shutil.which("wrk") or "/usr/bin/wrk",
        "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, env=env)
    figures: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def measure(server: Server, job: Job, seconds: int, warmup: int, round_: int) -> Run:
    url = server.base + job.paths[server.app]
    wrk(url, job.connections, warmup)
    figures = wrk(url, job.connections, seconds)
    errors = figures["connect"] + figures["read"] + figures["write"] + figures["timeout"]
    return Run(
        app=server.app,
        job=job.name,
        round=round_,
        rps=round(figures["requests"] / (figures["duration_us"] / 1e6), 1),
        p50_ms=round(figures["p50_us"] / 1000, 2),
        p99_ms=round(figures["p99_us"] / 1000, 2),
        errors=errors,
        non_2xx=figures["status"],
        rss_mb=round(server.rss_mb(), 1),
    )


def upstream_capacity(upstream: Upstream) -> dict[str, float]:
    """The upstream alone at the most calls the apps can have in flight at once."""
    concurrent = 64 * FAN_OUT
    figures = wrk(f"{upstream.base}/posts/1", concurrent, 3)
    rps = figures["requests"] / (figures["duration_us"] / 1e6)
    return {
        "concurrent": concurrent,
        "rps": round(rps, 1),
        "p50_ms": round(figures["p50_us"] / 1000, 2),
        "floor_ms": UPSTREAM_DELAY * 1000,
    }


# --- the report ---------------------------------------------------------------------------


def median(runs: list[Run], app: str, job: str, attribute: str) -> float | None:
    values = [getattr(r, attribute) for r in runs if r.app == app and r.job == job]
    return statistics.median(values) if values else None


def ratios(runs: list[Run], ours_: str, peer: str, job: str) -> list[float]:
    """`ours_`'s req/s over `peer`'s, per round in which both ran `job`."""
    out = []
    for round_ in sorted({r.round for r in runs}):
        ours = [r.rps for r in runs if (r.app, r.job, r.round) == (ours_, job, round_)]
        theirs = [r.rps for r in runs if (r.app, r.job, r.round) == (peer, job, round_)]
        if ours and theirs and theirs[0]:
            out.append(round(ours[0] / theirs[0], 2))
    return out


def render(report: Report) -> str:
    up = report.upstream
    lines = [
        f"# Benchmark {report.started}",
        "",
        f"Machine: {report.machine}. One worker per app, wrk (1 thread) from a separate "
        f"process, {report.seconds} s per run after a warm-up, {report.rounds} round(s), apps "
        f"interleaved. Medians across rounds. Upstream: nginx+echo, {up['floor_ms']:.0f} ms per "
        f"call; alone it served {up['rps']:.0f} req/s at {up['concurrent']:.0f} concurrent, "
        f"p50 {up['p50_ms']} ms.",
        "",
        "| job | app | req/s | p50 ms | p99 ms | errors | non-2xx | RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in JOBS:
        for app in APPS:
            if app not in job.paths:
                continue
            cells = [median(report.runs, app, job.name, a) for a in ("rps", "p50_ms", "p99_ms")]
            if cells[0] is None:  # not run: --apps or --jobs left it out
                continue
            errs = sum(r.errors for r in report.runs if (r.app, r.job) == (app, job.name))
            non2 = sum(r.non_2xx for r in report.runs if (r.app, r.job) == (app, job.name))
            rss = median(report.runs, app, job.name, "rss_mb")
            name = app + (" (its /db)" if app == "flask-blog" and "users" in job.name else "")
            lines.append(
                f"| {job.name} | {name} | {cells[0]:.0f} | {cells[1]:.1f} | {cells[2]:.1f} "
                f"| {errs} | {non2} | {rss:.0f} |"
            )
    lines += [
        "",
        f"{SAME_APP_ON_UVICORN} is this very app served by uvicorn instead of hypercorn: not a",
        f"peer, but the measure of what hypercorn costs. {FLOOR} is a bare Quart app doing the",
        "same jobs, served with this app's hypercorn settings: not a peer, the floor (its RSS",
        f"includes this app's modules, imported for those settings). {LIKE_FOR_LIKE} is this",
        f"app with its upstream cache and coalescing off; {CACHED} is this app as shipped,",
        "its upstream sending each post with max-age=60 and an ETag.",
        "",
        "Ratio of this service's req/s to each peer's and to the floor's, per round:",
        "",
    ]
    compared = (*PEERS, FLOOR)
    lines += [
        "| job | app | " + " | ".join(f"vs {peer}" for peer in compared) + " |",
        "| --- | --- |" + " --- |" * len(compared),
    ]
    for job in JOBS:
        for ours in (OURS, *VARIANTS):
            if ours not in job.paths or median(report.runs, ours, job.name, "rps") is None:
                continue
            ratio_cells: list[str] = []
            for peer in compared:
                values = ratios(report.runs, ours, peer, job.name) if peer in job.paths else []
                ratio_cells.append(", ".join(f"{v:.2f}x" for v in values) or "-")
            lines.append(f"| {job.name} | {ours} | " + " | ".join(ratio_cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: about 2.5 minutes")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset")
    parser.add_argument("--jobs", default="", help="only jobs whose name contains this")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3, 1
    apps = [app for app in APPS if app in args.apps.split(",")]
    for program in ("wrk", "nginx"):
        if not (shutil.which(program) or Path(f"/usr/sbin/{program}").exists()):
            sys.exit(f"{program} not found: apt-get install wrk nginx-light libnginx-mod-http-echo")
    if not ECHO_MODULE.exists():
        sys.exit("nginx's echo module not found: apt-get install libnginx-mod-http-echo")

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    database = PrivateMariaDB(workdir / "mariadb", port=free_port(), database="bench")
    upstream = Upstream(workdir)
    report = Report(
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        rounds=args.rounds,
        seconds=args.seconds,
        upstream={},
    )
    try:
        database.start()
        seed(database)
        upstream.start()
        report.upstream = upstream_capacity(upstream)
        print(f"upstream alone: {report.upstream}", flush=True)
        for round_ in range(1, args.rounds + 1):
            order = apps if round_ % 2 else list(reversed(apps))
            for app in order:
                server = start_server(app, database, upstream, workdir)
                try:
                    for job in JOBS:
                        if app in job.paths and args.jobs in job.name:
                            run = measure(server, job, args.seconds, args.warmup, round_)
                            report.runs.append(run)
                            print(json.dumps(asdict(run)), flush=True)
                finally:
                    server.stop()
    finally:
        upstream.stop()
        database.stop()

    table = render(report)
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench-quick" if args.quick else "bench"
    (RESULTS / f"{stem}.md").write_text(table)
    (RESULTS / f"{stem}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"written: bench/results/{stem}.md, bench/results/{stem}.json")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
