"""`make cluster`: the deployment's topology on one machine, from Debian's packages.

The private MariaDB (tools.devdb), one migration run, two private redis-servers
(loopback, a password, nothing on disk): one counts the write budget and never evicts,
the other holds the shared upstream cache within `maxmemory`, least recently used out
first; N instances of the service on their own ports (MIGRATE_ON_START=false, the
balancer as their trusted proxy), and HAProxy in front on HOST:PORT, health-checking
`/readyz`, retrying a request whose connection failed on another instance, and, when no
instance is ready (the database they share is away), sending requests to all of them
anyway: what does not need the database is still served. Everything listens on
127.0.0.1; state, logs and pid files live under .run/cluster/.

    python -m tools.cluster start [--instances 3]   # prints what runs where
    python -m tools.cluster stop                    # the MariaDB stays (make db-stop)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tools import REPO
from tools.devdb import PrivateMariaDB
from tools.ports import port_taken

CLUSTER_DIR = REPO / ".run" / "cluster"
# The upstream cache's bound in make cluster; a deployment sizes its own.
CACHE_MAXMEMORY = "64mb"


@dataclass(frozen=True)
class Cluster:
    directory: Path
    host: str
    port: int
    instances: int
    first_instance_port: int
    redis_port: int
    cache_redis_port: int

    @property
    def instance_ports(self) -> list[int]:
        return [self.first_instance_port + n for n in range(self.instances)]

    def secret(self, name: str) -> str:
        path = self.directory / name
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.secret('redis.password')}@127.0.0.1:{self.redis_port}/0"

    @property
    def cache_url(self) -> str:
        """The upstream cache, shared by the instances, on a Redis of its own: one that may
        evict (the budget's must not)."""
        return f"redis://:{self.secret('redis.password')}@127.0.0.1:{self.cache_redis_port}/0"

    def start(self, database_url: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        subprocess.run(
            [sys.executable, "-m", "app.migrate"],
            env={**os.environ, "DATABASE_URL": database_url},
            check=True,
            cwd=REPO,
        )
        self._start_redis("redis", self.redis_port, "noeviction")
        self._start_redis("cache-redis", self.cache_redis_port, "allkeys-lru")
        for n, port in enumerate(self.instance_ports, start=1):
            self.start_instance(n, port, database_url)
        self.start_haproxy()
        self._wait_until_ready()

    def _check_ports(self) -> None:
        """One line at once for a port another checkout (or anything) holds, not a long wait."""
        ours = {
            self.redis_port: "redis.pid",
            self.cache_redis_port: "cache-redis.pid",
            self.port: "haproxy.pid",
            **{port: f"instance-{n}.pid" for n, port in enumerate(self.instance_ports, start=1)},
        }
        for port, pid_file in ours.items():
            if not _alive(self.directory / pid_file) and port_taken(port):
                raise SystemExit(
                    f"port {port} on 127.0.0.1 is taken by another server (another checkout's"
                    " cluster? make cluster-stop there): choose other ports with PORT,"
                    " CLUSTER_INSTANCE_PORT, CLUSTER_REDIS_PORT and CLUSTER_CACHE_REDIS_PORT"
                )

    def _start_redis(self, name: str, port: int, policy: str) -> None:
        if _alive(self.directory / f"{name}.pid"):
            return
        subprocess.run(
            [
                _program("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                "--requirepass", self.secret("redis.password"), "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "yes",
                "--maxmemory", CACHE_MAXMEMORY if policy != "noeviction" else "0",
                "--maxmemory-policy", policy,
                "--pidfile", str(self.directory / f"{name}.pid"),
                "--logfile", str(self.directory / f"{name}.log"),
            ],
            check=True,
        )  # fmt: skip

    def start_instance(self, n: int, port: int, database_url: str) -> None:
        pid_file = self.directory / f"instance-{n}.pid"
        if _alive(pid_file):
            return
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MIGRATE_ON_START": "false",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            "RATE_LIMIT_STORAGE_URL": self.redis_url,
            "UPSTREAM_CACHE": os.environ.get("UPSTREAM_CACHE") or self.cache_url,
            "UPSTREAM_BASE_URL": os.environ.get("UPSTREAM_BASE_URL")
            or "https://jsonplaceholder.typicode.com",
            "DRAIN_SECONDS": os.environ.get("DRAIN_SECONDS", "3"),
            "API_TOKEN": os.environ.get("API_TOKEN") or self.secret("api_token"),
        }
        with (self.directory / f"instance-{n}.log").open("ab") as log:
            # a session of its own: it outlives this command, like the private MariaDB
            process = subprocess.Popen(
                [sys.executable, "-m", "app"],
                env=environment,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        pid_file.write_text(str(process.pid))

    def start_haproxy(self, extra: dict[str, str] | None = None) -> None:
        """HAProxy on HOST:PORT before the instances (and `extra` servers: name -> addr:port)."""
        config = self.directory / "haproxy.cfg"
        addresses = {
            f"app{n}": f"127.0.0.1:{port}" for n, port in enumerate(self.instance_ports, start=1)
        }
        every = {**addresses, **(extra or {})}
        servers = "\n".join(f"  server {name} {address} check" for name, address in every.items())
        # no health check: a stopped instance is a connection failure, retried elsewhere
        backups = "\n".join(
            f"  server {name}-any {address} backup" for name, address in every.items()
        )
        config.write_text(
            HAPROXY_CONFIG.format(
                bind=f"{self.host}:{self.port}",
                servers=servers,
                backup_servers=backups,
            )
        )
        pid_file = self.directory / "haproxy.pid"
        command = [_program("haproxy"), "-D", "-f", str(config), "-p", str(pid_file)]
        if _alive(pid_file):
            # a new configuration (another number of instances) without dropping connections
            command += ["-sf", pid_file.read_text().strip()]
        subprocess.run(command, check=True)

    def _wait_until_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for port in self.instance_ports:
            while httpx_status(f"http://127.0.0.1:{port}/readyz") != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"instance on port {port} not ready; see {self.directory}")
                time.sleep(0.2)
        while httpx_status(f"http://{self.host}:{self.port}/readyz") != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"HAProxy on {self.host}:{self.port} not ready")
            time.sleep(0.2)

    def stop(self) -> None:
        for pid_file in sorted(self.directory.glob("*.pid")):
            pid = read_pid(pid_file)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            pid_file.unlink(missing_ok=True)


HAPROXY_CONFIG = """\
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  # a request whose connection failed, or that an instance could not serve (503: its
  # database away) goes to another instance; after the request was sent, only a GET
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response junk-response 503
  option forwardfor

frontend web
  bind {bind}
  default_backend instances

backend instances
  balance roundrobin
  http-request disable-l7-retry unless METH_GET
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 2 rise 1
{servers}
  # No instance ready (their shared database is away, or all are stopping): send to them
  # all anyway, Envoy's panic threshold. The same instances, unchecked, as backups, used
  # only once every checked one is down: what needs no database is still served, what
  # does gets the instance's own 503 problem (after HAProxy's retries), never HAProxy's
  # page, and a GET retried at that moment still finds a server (with none, HAProxy
  # closes the client's connection unanswered).
  option allbackups
{backup_servers}
"""


def httpx_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise SystemExit(f"{name} not found: install Debian's {name} (apt-get install {name})")
    return found


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid_file: Path) -> bool:
    pid = read_pid(pid_file)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cluster_from_environment(instances: int) -> Cluster:
    return Cluster(
        directory=CLUSTER_DIR,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        instances=instances,
        first_instance_port=int(os.environ.get("CLUSTER_INSTANCE_PORT", "8101")),
        redis_port=int(os.environ.get("CLUSTER_REDIS_PORT", "6390")),
        cache_redis_port=int(os.environ.get("CLUSTER_CACHE_REDIS_PORT", "6391")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--instances", type=int, default=int(os.environ.get("INSTANCES", "3")))
    args = parser.parse_args()
    cluster = cluster_from_environment(args.instances)
    if args.command == "stop":
        cluster.stop()
        print("cluster stopped (the private MariaDB keeps running: make db-stop)")
        return
    database = PrivateMariaDB(
        REPO / ".run" / "mariadb", port=int(os.environ.get("DEV_DB_PORT", "3307"))
    )
    database.start()
    cluster.start(database.url)
    base = f"http://{cluster.host}:{cluster.port}"
    print(f"MariaDB       127.0.0.1:{database.port} (data in .run/mariadb)")
    print(
        f"Redis         127.0.0.1:{cluster.redis_port} the write budget (never evicts),"
        f" 127.0.0.1:{cluster.cache_redis_port} the upstream cache ({CACHE_MAXMEMORY}, LRU);"
        " password in .run/cluster/redis.password"
    )
    for n, port in enumerate(cluster.instance_ports, start=1):
        print(f"instance {n}    http://127.0.0.1:{port}  (log .run/cluster/instance-{n}.log)")
    print(f"HAProxy       {base}  (config .run/cluster/haproxy.cfg)")
    print(f"docs          {base}/docs   writes: Bearer token in .run/cluster/api_token")
    print("stop with: make cluster-stop")


if __name__ == "__main__":
    main()
