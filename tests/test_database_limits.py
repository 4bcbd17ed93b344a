"""The pool's two bounds against a real MariaDB: first come first served, and no hang."""

from __future__ import annotations

import asyncio

import asyncmy
from pydantic import MySQLDsn, TypeAdapter

from app import create_app
from app.data.database import Database, connect
from tests.support.settings import make_settings


async def test_waiters_for_a_connection_are_served_in_the_order_they_came(migrated: str) -> None:
    # both connections open from the start: every checkout takes an idle one
    database = Database(TypeAdapter(MySQLDsn).validate_python(migrated), minsize=2, maxsize=2)
    await database.start()
    arrivals = 0
    grants: list[int] = []

    async def worker() -> None:
        nonlocal arrivals
        for _ in range(15):
            ticket = arrivals
            arrivals += 1
            async with database.connection() as connection:
                grants.append(ticket)
                async with connection.cursor() as cursor:
                    await cursor.execute("SELECT 1")
                    await cursor.fetchall()

    try:
        await asyncio.gather(*(worker() for _ in range(8)))
    finally:
        await database.close()

    assert len(grants) == 120
    # each request got its connection in the order it asked: none passed over
    assert grants == sorted(grants)


async def test_a_locked_table_costs_a_503_not_a_hang_and_readiness_holds(
    migrated: str, db: asyncmy.Connection
) -> None:
    settings = make_settings(migrated, db_query_timeout=1.0, db_pool_timeout=0.5)
    app = create_app(settings)
    locker = await connect(TypeAdapter(MySQLDsn).validate_python(migrated))
    try:
        async with app.test_app() as running:
            client = running.test_client()
            assert (await client.get("/db")).status_code == 200
            async with locker.cursor() as cursor:
                await cursor.execute("LOCK TABLES users WRITE")
            loop = asyncio.get_running_loop()
            started = loop.time()
            answers = await asyncio.gather(*(client.get("/db") for _ in range(30)))
            took = loop.time() - started
            ready = await client.get("/readyz")
            async with locker.cursor() as cursor:
                await cursor.execute("UNLOCK TABLES")
            after = [(await client.get("/db")).status_code for _ in range(12)]
    finally:
        await locker.ensure_closed()

    assert [answer.status_code for answer in answers] == [503] * 30
    assert all(answer.headers["Retry-After"] == "1" for answer in answers)
    details = {(await answer.get_json())["detail"] for answer in answers}
    assert details == {
        "The database did not answer within 1 s; try again shortly.",
        "Every database connection is busy; try again shortly.",
    }
    # generous: the bound is 1 s; a hang would be as long as the lock (until UNLOCK)
    assert took < 3.0
    assert ready.status_code == 200, "the database answers pings while a table is locked"
    # every abandoned connection was closed, not handed out again mid-statement
    assert after == [200] * 12


async def test_a_readiness_ping_cut_short_leaves_the_next_one_working(migrated: str) -> None:
    database = Database(TypeAdapter(MySQLDsn).validate_python(migrated), minsize=1, maxsize=2)
    await database.start()
    try:
        assert await database.ping(1.0)
        for _ in range(3):
            # a client that hangs up cancels its request's task mid-ping
            cut = asyncio.create_task(database.ping(1.0))
            await asyncio.sleep(0)
            cut.cancel()
            await asyncio.gather(cut, return_exceptions=True)
            assert await database.ping(1.0)
    finally:
        await database.close()
