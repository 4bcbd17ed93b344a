"""The one asyncmy connection pool, opened when the database first answers.

`Database.start()` never waits for the database: when it is down at start-up the
service still serves, routes that need it answer 503 at once, and a background task
keeps trying; when the database answers, pending migrations are applied and only then
is the pool handed to the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import asyncmy
from asyncmy.cursors import Cursor
from pydantic import MySQLDsn

from app.telemetry import tracing
from app.telemetry.metrics import DB_POOL_FREE, DB_POOL_SIZE

# Every connection speaks UTC, so CURRENT_TIMESTAMP(6) columns hold UTC.
INIT_COMMAND = "SET time_zone = '+00:00'"
CONNECT_TIMEOUT = 3
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)

log = logging.getLogger(__name__)


def connect_kwargs(url: MySQLDsn) -> dict[str, Any]:
    """asyncmy's connect() arguments for a `mysql://user:password@host:port/database` URL."""
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": unquote(url.username or ""),
        "password": unquote(url.password or ""),
        "database": unquote((url.path or "").strip("/")),
        "charset": "utf8mb4",
        "init_command": INIT_COMMAND,
        "connect_timeout": CONNECT_TIMEOUT,
    }


async def connect(url: MySQLDsn, **extra: Any) -> asyncmy.Connection:
    """A single connection outside the pool (migrations)."""
    return await asyncmy.connect(autocommit=True, **connect_kwargs(url), **extra)


async def execute(cursor: Cursor, statement: str, values: Mapping[str, Any]) -> None:
    """Run one statement, `values` bound by the driver. The one place the routes'
    statements run: with tracing on, each gets a span holding the statement as written,
    never a value (asyncmy has no OpenTelemetry instrumentation of its own)."""
    if tracing.active is None:
        await cursor.execute(statement, values)
        return
    with tracing.active.statement_span(statement):
        await cursor.execute(statement, values)


class DatabaseUnavailable(Exception):
    """The database did not answer, or not in time; the web edge answers 503."""

    def __init__(self, detail: str = "The database is not answering; try again shortly.") -> None:
        super().__init__(detail)
        self.detail = detail


# No such table, no such column: the schema is older than this code (not migrated yet).
SCHEMA_BEHIND_ERRORS = (1146, 1054)

# Errors that mean the server is gone, not that the query is wrong.
CONNECTION_ERRORS = (asyncmy.errors.OperationalError, asyncmy.errors.InterfaceError, OSError)


class Database:
    """The pool, and the two bounds on every use of it.

    - `pool_timeout`: how long a request waits for a free connection. Waiters are served
      first come, first served (asyncmy's pool lets a newcomer take a freed connection
      ahead of those already waiting, so some waited for seconds under load).
    - `query_timeout`: how long a request may hold a connection, counted from when it
      started to wait for one. Past it the statement is abandoned and the connection
      closed: a frozen or locked database costs requests a 503, never a hang.
    """

    def __init__(
        self,
        url: MySQLDsn,
        *,
        minsize: int,
        maxsize: int,
        query_timeout: float = 5.0,
        pool_timeout: float = 2.0,
        prepare: Callable[[MySQLDsn], Awaitable[object]] | None = None,
        required_migrations: dict[int, str] | None = None,
    ) -> None:
        self.url = url
        self.minsize = minsize
        self.maxsize = maxsize
        self.query_timeout = query_timeout
        self.pool_timeout = pool_timeout
        # run on the first connection before the pool opens (the lifespan passes migrate)
        self.prepare = prepare
        # version -> name of every migration this code needs; checked until all are there
        self.required_migrations = dict(required_migrations or {})
        self.pool: asyncmy.Pool | None = None
        self._opener: asyncio.Task[None] | None = None
        # asyncio's Semaphore hands a released slot to the longest waiter
        self._slots = asyncio.Semaphore(maxsize)
        self._pinger: asyncmy.Connection | None = None
        self._ping_lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the pool now if the database answers, else keep trying in the background."""
        try:
            await self._open()
        except CONNECTION_ERRORS as error:
            log.warning(
                "database not answering at start-up; will keep trying", extra={"error": str(error)}
            )
            self._opener = asyncio.create_task(self._keep_trying(), name="database-opener")

    async def _open(self) -> None:
        if self.prepare is not None:
            await self.prepare(self.url)
        # autocommit=True: with it off every read leaves a transaction open, and the pool
        # closes a connection released inside a transaction, so each query would open a
        # new one. A write that spans statements would need an explicit transaction.
        self.pool = await asyncmy.create_pool(
            minsize=self.minsize,
            maxsize=self.maxsize,
            pool_recycle=3600,
            autocommit=True,
            **connect_kwargs(self.url),
        )

    async def _keep_trying(self) -> None:
        attempt = 0
        while self.pool is None:
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1
            try:
                await self._open()
            except CONNECTION_ERRORS:
                continue
            except Exception:
                # A migration that fails on a live database will not fix itself by retrying.
                log.exception(
                    "database answering, but opening it failed; routes keep answering 503"
                )
                return
            log.info("database answering; pool open")

    def report_pool(self) -> None:
        """Put the pool's size and idle connections in the metrics."""
        DB_POOL_SIZE.set(self.pool.size if self.pool is not None else 0)
        DB_POOL_FREE.set(self.pool.freesize if self.pool is not None else 0)

    @contextlib.asynccontextmanager
    async def _pinger_connection(self, within: float) -> AsyncIterator[asyncmy.Connection]:
        """The connection kept for readiness checks, outside the pool (a pool busy with slow
        requests says nothing about whether the database is alive), within `within` s.

        Cut short (a timeout, an error, or the request cancelled when its client hung up),
        the connection is mid-conversation: it is dropped, and the next check opens another.
        """
        answered = False
        try:
            async with asyncio.timeout(within), self._ping_lock:
                if self._pinger is None:
                    self._pinger = await connect(self.url)
                yield self._pinger
            answered = True
        finally:
            if not answered and self._pinger is not None:
                self._pinger.close()
                self._pinger = None

    async def ping(self, within: float) -> bool:
        """Whether the database answers a round trip within `within` seconds.

        A kept connection that fails is tried once more on a fresh one within the same
        time: after a database restart the kept one died while idle, and says nothing
        about the database now.
        """
        if self.pool is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        retry = self._pinger is not None  # only a kept connection may have died idle
        while True:
            try:
                async with self._pinger_connection(deadline - loop.time()) as pinger:
                    await pinger.ping(reconnect=False)
            except TimeoutError:
                return False
            except (asyncmy.errors.Error, OSError):
                if not retry:
                    return False
                retry = False  # the failed one was dropped: the next try opens a fresh one
                continue
            return True

    async def missing_migrations(self, within: float) -> list[str]:
        """The migrations this code needs that the database lacks, asked on the readiness
        connection; DatabaseUnavailable when it does not answer within `within` seconds.

        Migrations are only ever added, so once none is missing that is remembered.
        """
        if not self.required_migrations:
            return []
        applied: set[int] = set()
        try:
            async with self._pinger_connection(within) as pinger, pinger.cursor() as cursor:
                try:
                    await cursor.execute("SELECT version FROM schema_migrations")
                    applied = {version for (version,) in await cursor.fetchall()}
                except asyncmy.errors.ProgrammingError:  # no schema_migrations: none applied
                    pass
        except (TimeoutError, asyncmy.errors.Error, OSError):
            raise DatabaseUnavailable("The database is not answering.") from None
        missing = [
            name
            for version, name in sorted(self.required_migrations.items())
            if version not in applied
        ]
        if not missing:
            self.required_migrations = {}
        return missing

    async def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        if self._pinger is not None:
            self._pinger.close()
            self._pinger = None
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()
            self.pool = None

    async def _checkout(self, deadline: float) -> asyncmy.Connection:
        """A connection from the pool by `deadline`, else TimeoutError.

        An idle connection is taken at once. Otherwise the checkout (which may open a new
        connection) runs as a task of its own and the request stops waiting for it at the
        deadline: cancelled inside asyncmy while it opened a connection to a frozen
        server, a checkout sometimes went on waiting until the server woke (a request
        answered after 6.6 s with a 1 s timeout). One that arrives late goes back to the
        pool.
        """
        assert self.pool is not None
        pool = self.pool
        if pool.freesize and not pool.cond.locked():
            # asyncmy hands out an idle connection without suspending: no task needed. With
            # its lock held (another checkout opening a connection) it would wait for that.
            idle: asyncmy.Connection = await pool.acquire()
            return idle

        async def checkout() -> asyncmy.Connection:
            connection: asyncmy.Connection = await pool.acquire()
            return connection

        def give_back(task: asyncio.Task[asyncmy.Connection]) -> None:
            if not task.cancelled() and task.exception() is None:
                pool.release(task.result())

        task = asyncio.create_task(checkout())
        try:
            done, _ = await asyncio.wait(
                {task}, timeout=deadline - asyncio.get_running_loop().time()
            )
        except BaseException:
            task.add_done_callback(give_back)
            raise
        if not done:
            task.add_done_callback(give_back)
            raise TimeoutError
        return task.result()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncmy.Connection]:
        """A pooled connection, within both bounds; the database failing becomes a 503.

        One timer bounds both: the wait for a slot until `pool_timeout`, then, moved on,
        the checkout and the statement until `query_timeout` from the start.
        """
        if self.pool is None:
            raise DatabaseUnavailable()
        started = asyncio.get_running_loop().time()
        deadline = started + self.query_timeout
        waiting = True
        try:
            async with asyncio.timeout_at(started + self.pool_timeout) as bound:
                await self._slots.acquire()
                waiting = False
                bound.reschedule(deadline)
                try:
                    connection = await self._checkout(deadline)
                    try:
                        yield connection
                    except (asyncio.CancelledError, TimeoutError, *CONNECTION_ERRORS):
                        # A statement cut short leaves the connection mid-conversation:
                        # closed, the pool drops it instead of handing it out again.
                        connection.close()
                        raise
                    finally:
                        await self.pool.release(connection)
                finally:
                    self._slots.release()
        except TimeoutError:
            if waiting:
                raise DatabaseUnavailable(
                    "Every database connection is busy; try again shortly."
                ) from None
            log.warning("database statement abandoned", extra={"after_s": self.query_timeout})
            raise DatabaseUnavailable(
                f"The database did not answer within {self.query_timeout:g} s; try again shortly."
            ) from None
        except CONNECTION_ERRORS as error:
            log.warning("database connection failed", extra={"error": str(error)})
            raise DatabaseUnavailable() from None
        except asyncmy.errors.ProgrammingError as error:
            if error.args[0] not in SCHEMA_BEHIND_ERRORS:
                raise
            raise DatabaseUnavailable(
                "The database lacks a migration this version needs; try again shortly."
            ) from None
