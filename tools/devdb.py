"""The private MariaDB that `make run` and the tests use when DATABASE_URL is unset.

It is the system's `mariadbd` (Debian's `mariadb-server`) run as a child of nobody: its
own data directory, socket, pid file and log under one folder, listening on 127.0.0.1
only, never the system service. Starting it when it already runs does nothing, and it
outlives `make run` so the next one starts at once; `make db-stop` stops it.

    python -m tools.devdb start [--dir .run/mariadb] [--port 3307]   # prints DATABASE_URL
    python -m tools.devdb stop  [--dir .run/mariadb]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncmy

from tools.ports import port_taken

START_TIMEOUT = 30.0
INSTALL_HINT = (
    "mariadbd not found: install Debian's mariadb-server (apt-get install mariadb-server) "
    "or set DATABASE_URL to a MariaDB/MySQL server"
)


class DevDBError(RuntimeError):
    pass


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")


@dataclass(frozen=True)
class PrivateMariaDB:
    directory: Path
    port: int = 3307
    database: str = "app"
    user: str = "app"
    # The test suite's own instance lets its user create databases (migration tests).
    grant_all: bool = False
    # The tests run the server off UTC to prove the app stores and answers UTC anyway.
    default_time_zone: str | None = None

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def socket(self) -> Path:
        return self.directory / "mariadbd.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mariadbd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "mariadbd.log"

    @property
    def password(self) -> str:
        path = self.directory / "password"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    @property
    def url(self) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def pid(self) -> int | None:
        """The pid of our mariadbd when it is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start(self) -> None:
        if self.pid() is not None and self._answers():
            return
        mariadbd = _find("mariadbd")
        install_db = _find("mariadb-install-db")
        setsid = _find("setsid")
        if mariadbd is None or install_db is None:
            raise DevDBError(INSTALL_HINT)
        if setsid is None:
            raise DevDBError("setsid not found: install util-linux")
        if port_taken(self.port):
            # another checkout's private MariaDB, or any other server: say so now rather
            # than wait 30 s for a mariadbd that cannot bind
            raise DevDBError(
                f"port {self.port} on 127.0.0.1 is taken by another server (another checkout's"
                " private MariaDB?): run `make db-stop` in that checkout, or choose another"
                " port with DEV_DB_PORT=NNNN"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        os_user = getpass.getuser()
        if not (self.datadir / "mysql").is_dir():
            self._run(
                install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--user={os_user}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            )
        init_file = self.directory / "init.sql"
        init_file.write_text(self._init_sql())
        init_file.chmod(0o600)
        with self.log_file.open("ab") as log:
            # setsid --fork: a new session, not our child, so Ctrl-C on `make run` does not
            # reach the database and it outlives the command that started it.
            subprocess.run(
                [
                    setsid,
                    "--fork",
                    mariadbd,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--pid-file={self.pid_file}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--user={os_user}",
                    f"--init-file={init_file}",
                    "--skip-name-resolve",
                    "--max-connections=500",
                    "--innodb-buffer-pool-size=128M",
                    # a development database: durability per second is plenty
                    "--innodb-flush-log-at-trx-commit=2",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_unicode_ci",
                    *(
                        [f"--default-time-zone={self.default_time_zone}"]
                        if self.default_time_zone
                        else []
                    ),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.1)
        raise DevDBError(
            f"mariadbd did not answer within {START_TIMEOUT:.0f} s; see {self.log_file}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def _init_sql(self) -> str:
        # Run by mariadbd at every start: idempotent, and it keeps the password in step
        # with the password file.
        account = f"'{self.user}'@'%'"
        secret = self.password.replace("'", "''")
        scope = "*" if self.grant_all else f"`{self.database}`"
        return (
            f"CREATE DATABASE IF NOT EXISTS `{self.database}`;\n"
            f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{secret}';\n"
            f"ALTER USER {account} IDENTIFIED BY '{secret}';\n"
            f"GRANT ALL PRIVILEGES ON {scope}.* TO {account};\n"
        )

    def _answers(self) -> bool:
        async def ping() -> None:
            connection = await asyncmy.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                password=self.password,
                database=self.database,
                connect_timeout=1,
            )
            await connection.ensure_closed()

        try:
            asyncio.run(ping())
        except (TimeoutError, asyncmy.errors.Error, OSError):
            return False
        return True

    def _run(self, *command: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevDBError(
                f"{command[0]} failed: {result.stderr.strip() or result.stdout.strip()}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.devdb", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["start", "stop", "url"])
    parser.add_argument("--dir", type=Path, default=Path(".run/mariadb"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEV_DB_PORT", "3307")))
    args = parser.parse_args()
    instance = PrivateMariaDB(args.dir.resolve(), port=args.port)
    try:
        if args.action == "start":
            instance.start()
            print(instance.url)
        elif args.action == "stop":
            instance.stop()
        else:
            print(instance.url)
    except DevDBError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
