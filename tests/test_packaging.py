"""The service as a deployer installs it: the wheel in a fresh venv outside the checkout,
with only the runtime lock, migrates a database and serves from there, through the
console scripts the wheel installs (`python -m app` is what the other tests run)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from tests.support.processes import clean_environ, wait_until_answering
from tools import REPO
from tools.ports import free_port

pytestmark = pytest.mark.e2e


def run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=600,
        check=False, env=clean_environ(PYTHONPATH=""),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_wheel_alone_migrates_and_serves(tmp_path: Path, database_url: str) -> None:
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "-w",
        tmp_path,
        REPO,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("quart_async_demo-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    pip: list[str | Path] = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    run(*pip, "--require-hashes", "-r", REPO / "requirements.lock", cwd=tmp_path)
    run(*pip, wheel, cwd=tmp_path)
    database = database_url.rsplit("/", 1)[0] + "/packaged"
    admin = database_url

    run(
        python, "-c",
        "import asyncio, sys; from pydantic import MySQLDsn, TypeAdapter;"
        "from app.data.database import connect\n"
        "async def main():\n"
        "    c = await connect(TypeAdapter(MySQLDsn).validate_python(sys.argv[1]))\n"
        "    async with c.cursor() as cur:\n"
        "        await cur.execute('DROP DATABASE IF EXISTS packaged')\n"
        "        await cur.execute('CREATE DATABASE packaged')\n"
        "    await c.ensure_closed()\n"
        "asyncio.run(main())",
        admin, cwd=tmp_path,
    )  # fmt: skip
    scripts = tmp_path / "venv" / "bin"
    migrated = subprocess.run(
        [scripts / "quart-async-demo-migrate"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False, env=clean_environ(PYTHONPATH="", DATABASE_URL=database),
    )  # fmt: skip
    port = free_port()
    service = subprocess.Popen(
        [scripts / "quart-async-demo"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=clean_environ(
            PYTHONPATH="", DATABASE_URL=database, PORT=str(port), MIGRATE_ON_START="false"
        ),
    )  # fmt: skip
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/healthz", service)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        service.terminate()
        service.wait(timeout=30)

    assert "migrations: 2 applied (0001_create_users, 0002_add_user_version)" in migrated.stdout, (
        migrated.stderr
    )
    assert ready.status_code == 200
