"""A private Redis for the tests: Debian's redis-server on loopback, a password, no disk."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.ports import free_port


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """Start redis-server; yield its redis:// URL (with the password); stop it after."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port, password = free_port(), secrets.token_urlsafe(16)
    process = subprocess.Popen(
        [
            server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
            "--save", "", "--appendonly", "no", "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
