"""Applies the numbered SQL files in `migrations/` in order and records each one.

Why not a migration tool: the well-kept SQL migration tools for MySQL (yoyo, alembic,
...) talk to the database through a second, synchronous driver (PyMySQL/mysqlclient).
This runner is small and uses asyncmy, the driver the app already has.

- `NNNN_description.sql`, applied in order of NNNN, each recorded in `schema_migrations`
  with a checksum only after it succeeded. MySQL commits DDL implicitly, so a file cannot
  be rolled back: keep one change per file.
- An applied file whose text changed stops the run: migrations are history, add a new one.
- `GET_LOCK` serialises concurrent runners (several workers or instances starting at once):
  the second waits, then finds nothing left to do.

Run it with `python -m app.migrate` (or `make migrate`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncmy
from asyncmy.constants.CLIENT import MULTI_STATEMENTS
from pydantic import MySQLDsn

from app.data.database import connect

# Inside the package when installed from the wheel (pyproject.toml puts them there); at the
# top of the checkout when run from source.
_PACKAGED = Path(__file__).resolve().parents[1] / "migrations"
MIGRATIONS_DIR = (
    _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "migrations"
)
LOCK_NAME = "quart_async_demo.migrate"
LOCK_WAIT_SECONDS = 60
FILE_NAME = re.compile(r"^(\d+)_([a-z0-9_]+)\.sql$")

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version, name = int(match[1]), match[2]
        migrations.append(Migration(version, name, path.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return sorted(migrations, key=lambda migration: migration.version)


async def migrate(url: MySQLDsn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names of those applied now."""
    migrations = load_migrations(directory)
    connection = await connect(url, client_flag=MULTI_STATEMENTS)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_WAIT_SECONDS))
            (locked,) = await cursor.fetchone()
            if locked != 1:
                raise MigrationError(
                    f"another migration run held the lock for {LOCK_WAIT_SECONDS} s"
                )
            try:
                return await _apply_pending(cursor, migrations)
            finally:
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
    finally:
        await connection.ensure_closed()


async def _apply_pending(cursor: asyncmy.cursors.Cursor, migrations: list[Migration]) -> list[str]:
    # Checked first rather than CREATE ... IF NOT EXISTS, whose note asyncmy logs as a warning.
    await cursor.execute(
        "SELECT COUNT(*) FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'"
    )
    (exists,) = await cursor.fetchone()
    if not exists:
        await cursor.execute(
            "CREATE TABLE schema_migrations ("
            " version INT UNSIGNED NOT NULL PRIMARY KEY,"
            " name VARCHAR(255) NOT NULL,"
            " checksum CHAR(64) NOT NULL,"
            " applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
        )
    await cursor.execute("SELECT version, checksum FROM schema_migrations")
    applied = {version: checksum for version, checksum in await cursor.fetchall()}

    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    "was applied; add a new migration instead"
                )
            continue
        await cursor.execute(migration.sql)
        while await cursor.nextset():
            pass
        await cursor.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
        log.info("applied migration", extra={"migration": migration.label})
        done.append(migration.label)
    return done
