"""The migration runner against the real MariaDB, each test on a database of its own."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncmy
import pytest
from pydantic import MySQLDsn, TypeAdapter

from app import create_app
from app.data.database import connect
from app.data.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate
from tests.support.settings import make_settings
from tools.devdb import DevDBError, PrivateMariaDB


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[MySQLDsn]:
    name = f"migrations_{uuid.uuid4().hex[:12]}"
    server = TypeAdapter(MySQLDsn).validate_python(database_url)
    admin = await connect(server)
    async with admin.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE `{name}`")
    yield TypeAdapter(MySQLDsn).validate_python(str(server).rsplit("/", 1)[0] + f"/{name}")
    async with admin.cursor() as cursor:
        await cursor.execute(f"DROP DATABASE `{name}`")
    await admin.ensure_closed()


async def query(url: MySQLDsn, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    connection = await connect(url)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall())
    finally:
        await connection.ensure_closed()


async def test_a_fresh_database_gets_every_migration_once(empty_database: MySQLDsn) -> None:
    first = await migrate(empty_database)
    second = await migrate(empty_database)

    assert first == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert second == []
    recorded = await query(empty_database, "SELECT version FROM schema_migrations ORDER BY version")
    assert [row[0] for row in recorded] == [m.version for m in load_migrations()]


async def test_concurrent_runners_apply_each_migration_exactly_once(
    empty_database: MySQLDsn,
) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))

    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in load_migrations())


async def test_a_migration_changed_after_it_was_applied_stops_the_run(
    empty_database: MySQLDsn, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    await migrate(empty_database, directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")

    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database, directory)


async def test_a_failing_migration_is_not_recorded(
    empty_database: MySQLDsn, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "9999_broken.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x INT;\n")

    with pytest.raises(asyncmy.errors.ProgrammingError):
        await migrate(empty_database, directory)

    versions = [
        row[0] for row in await query(empty_database, "SELECT version FROM schema_migrations")
    ]
    assert 9999 not in versions
    assert 1 in versions


def test_files_must_be_numbered(tmp_path: Path) -> None:
    (tmp_path / "create_things.sql").write_text("SELECT 1;")

    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


async def test_emails_are_unique_whatever_their_case(empty_database: MySQLDsn) -> None:
    await migrate(empty_database)
    await query(empty_database, "INSERT INTO users (name, email) VALUES ('A', 'Ada@Example.com')")

    with pytest.raises(asyncmy.errors.IntegrityError):
        await query(
            empty_database, "INSERT INTO users (name, email) VALUES ('B', 'ada@example.COM')"
        )

    stored = await query(empty_database, "SELECT email FROM users")
    assert stored == [("Ada@Example.com",)]


async def test_times_are_utc_with_microseconds_on_a_server_off_utc(
    empty_database: MySQLDsn,
) -> None:
    await migrate(empty_database)
    await query(empty_database, "INSERT INTO users (name, email) VALUES ('A', 'a@example.com')")

    ((created, updated),) = await query(empty_database, "SELECT created_at, updated_at FROM users")

    assert isinstance(created, datetime)
    assert abs(created.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    assert created == updated
    columns = await query(
        empty_database,
        "SELECT column_name, datetime_precision FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = 'users' AND data_type = 'datetime'",
    )
    assert {str(name).lower(): precision for name, precision in columns} == {
        "created_at": 6,
        "updated_at": 6,
    }


async def test_without_migrating_at_start_the_service_says_its_schema_is_behind(
    empty_database: MySQLDsn,
) -> None:
    app = create_app(make_settings(str(empty_database), migrate_on_start=False))

    async with app.test_app() as running:
        client = running.test_client()
        behind = await client.get("/readyz")
        users = await client.get("/api/v1/users")
        tables = await query(empty_database, "SHOW TABLES")
        applied = await migrate(empty_database)  # the deploy step
        ready = await client.get("/readyz")
        after = await client.get("/api/v1/users")

    problem = await behind.get_json()
    assert (behind.status_code, problem["code"]) == (503, "schema_behind")
    assert "0001_create_users" in problem["detail"]
    assert users.status_code == 503, "a request before the migration is a 503, never a 500"
    assert tables == [], "the service did not migrate by itself"
    assert applied == [migration.label for migration in load_migrations()]
    assert (ready.status_code, after.status_code) == (200, 200)


def test_a_private_mariadb_on_a_taken_port_says_so_at_once(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        database = PrivateMariaDB(tmp_path / "db", port=port, database="taken")
        started = time.monotonic()
        with pytest.raises(DevDBError, match=f"port {port} .* is taken"):
            database.start()

    assert time.monotonic() - started < 5, "no 30 s wait for a server that cannot bind"
