"""Fixtures: one real MariaDB for the whole session, a fresh app per test.

The suite never touches the database `make run` serves: it starts its own private
MariaDB in a temporary directory on a free port (or uses TEST_DATABASE_URL).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncmy
import httpx
import pytest
from pydantic import MySQLDsn, TypeAdapter
from quart import Quart
from quart.testing import QuartClient
from quart.typing import TestAppProtocol

from app import create_app
from app.data.database import connect
from app.data.migrate import migrate
from app.settings import Settings
from tests.support.processes import Service, running_service
from tests.support.redis import private_redis
from tests.support.settings import E2E_TOKEN, TOKEN, make_settings
from tools.devdb import PrivateMariaDB
from tools.ports import free_port
from tools.upstream_stub import running_stub


@pytest.fixture(scope="session", autouse=True)
def long_lived_objects_frozen() -> None:
    """What the suite has loaded (pytest, its plugins, the app's modules and schemas) is
    left out of later collections, as app.asgi does for the served app: without this, a
    full collection here can take a quarter of a second on a busy machine, in the middle
    of whatever test runs, and the loop monitor rightly calls that a blocked loop."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB | None]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    instance = PrivateMariaDB(
        tmp_path_factory.mktemp("mariadb"),
        port=free_port(),
        database="app_test",
        grant_all=True,
        default_time_zone="+05:30",
    )
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def database_url(mariadb: PrivateMariaDB | None) -> str:
    return mariadb.url if mariadb is not None else os.environ["TEST_DATABASE_URL"]


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> str:
    await migrate(TypeAdapter(MySQLDsn).validate_python(database_url))
    return database_url


@pytest.fixture
def settings(migrated: str) -> Settings:
    return make_settings(migrated)


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[asyncmy.Connection]:
    """A connection to the test database, with the users table emptied first."""
    connection = await connect(TypeAdapter(MySQLDsn).validate_python(migrated))
    async with connection.cursor() as cursor:
        await cursor.execute("DELETE FROM users")
    yield connection
    await connection.ensure_closed()


@pytest.fixture
def app(settings: Settings) -> Quart:
    # httpx's own transport, so respx can stand in for the upstream
    return create_app(settings, upstream_transport=httpx.AsyncHTTPTransport())


@pytest.fixture
async def test_app(app: Quart) -> AsyncIterator[TestAppProtocol]:
    """The app with its before_serving hooks run (test_client() alone skips them)."""
    async with app.test_app() as running:
        yield running


@pytest.fixture
async def api(migrated: str, db: asyncmy.Connection) -> AsyncIterator[QuartClient]:
    """A client of an app with API_TOKEN set, on an emptied users table."""
    app = create_app(make_settings(migrated, api_token=TOKEN, max_body_bytes=2048))
    async with app.test_app() as running:
        client: QuartClient = running.test_client()  # type: ignore[assignment]
        yield client


@pytest.fixture
def client(test_app: TestAppProtocol) -> QuartClient:
    client: QuartClient = test_app.test_client()  # type: ignore[assignment]
    return client


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (tests/support/redis.py) for the shared write budget."""
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def stub() -> Iterator[str]:
    """A real upstream on loopback (tools/upstream_stub.py)."""
    with running_stub() as base:
        yield base


@pytest.fixture(scope="session")
def service(
    stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """`python -m app` under hypercorn, with the stub as its upstream and API_TOKEN set."""
    with running_service(
        tmp_path_factory.mktemp("service"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=stub,
        API_TOKEN=E2E_TOKEN,
        # schemathesis writes hundreds of times a second; the limit has tests of its own
        WRITE_RATE_LIMIT="1000000/minute",
    ) as running:
        yield running


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_blocked_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test during which an app saw its event loop blocked."""
    collect = _Collect()
    logger = logging.getLogger("app.telemetry.loop_monitor")
    logger.addHandler(collect)
    try:
        yield
    finally:
        logger.removeHandler(collect)
    if request.node.get_closest_marker("allow_loop_block") is None and collect.records:
        details = [getattr(record, "routes_in_flight", None) for record in collect.records]
        pytest.fail(f"the event loop was blocked during this test; routes in flight: {details}")
