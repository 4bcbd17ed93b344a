"""Helpers for end-to-end tests: processes on loopback, started and stopped for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tools import REPO
from tools.ports import free_port

# Variables a developer's shell may hold that would change what the tests see.
SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def clean_environ(**settings: str) -> dict[str, str]:
    # OTEL_*: a developer's collector would turn tracing on in every service started here
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTINGS_VARIABLES and not name.startswith("OTEL_")
    }
    environ["PYTHONPATH"] = str(REPO)
    environ.update(settings)
    return environ


def wait_until_answering(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Service:
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[str]:
        """What the service wrote to stderr: its logs."""
        return self.log_path.read_text().splitlines()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


async def metric(service: Service, name: str, **labels: str) -> float:
    """The value of one sample on the service's /metrics (0 when it is not there)."""
    async with httpx.AsyncClient(base_url=service.base) as client:
        text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def serve_command(workdir: Path, **settings: str) -> dict[str, Any]:
    """`python -m app` in a clean environment with these settings, `workdir` as its cwd."""
    return {"args": [sys.executable, "-m", "app"], "env": clean_environ(**settings), "cwd": workdir}


def start_service(workdir: Path, **settings: str) -> Service:
    """`python -m app` (hypercorn) in a clean environment, with `workdir` as cwd (no .env)."""
    port = settings.setdefault("PORT", str(free_port()))
    # as in the in-process tests: above the scheduling noise of a loaded 2-core CI machine
    settings.setdefault("LOOP_BLOCK_THRESHOLD", "0.25")
    log_path = workdir / f"service-{port}.log"
    with log_path.open("wb") as log, (workdir / f"service-{port}.out").open("wb") as out:
        # a process group of its own, as under a service manager: a test may signal all of it
        process = subprocess.Popen(
            **serve_command(workdir, **settings), stdout=out, stderr=log, start_new_session=True
        )
    service = Service(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_answering(f"{service.base}/healthz", process)
    except RuntimeError:
        service.stop()
        raise RuntimeError(f"the service did not start:\n{log_path.read_text()}") from None
    return service


@contextmanager
def running_service(workdir: Path, **settings: str) -> Iterator[Service]:
    service = start_service(workdir, **settings)
    try:
        yield service
    finally:
        service.stop()
