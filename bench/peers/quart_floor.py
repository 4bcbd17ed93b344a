"""The floor: the same two jobs in a bare Quart app, served exactly as this service is.

What Quart and hypercorn cost with none of the service's own work: no validation, no
logs, no metrics, no problem+json, no rate limits. The clients are the FastAPI peer's:
one shared httpx client over an aiohttp transport, one asyncmy pool with autocommit; the
answers have the FastAPI peer's shape, written by Quart's own JSON provider. That is
stdlib json, slower than the service's pydantic-core on /db's 100 rows: there the floor
spends more instructions per request than the service does.

    python -m bench.peers.quart_floor  # HOST, PORT and the BENCH_* variables as for fastapi
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from typing import Any

import asyncmy
import httpx
from asyncmy.cursors import DictCursor
from httpx_aiohttp import AiohttpTransport
from quart import Quart, request

BASE = os.environ["BENCH_UPSTREAM_BASE_URL"].rstrip("/")
CONCURRENCY = int(os.environ.get("BENCH_UPSTREAM_MAX_CONCURRENCY", "100"))
# The times as RFC 3339 text from MariaDB, as this service selects them: no Python per row.
USERS_SQL = (
    "SELECT id, name, email,"
    " DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at,"
    " DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS updated_at"
    " FROM users ORDER BY id LIMIT 1000"
)


class State:
    client: httpx.AsyncClient
    slots: asyncio.Semaphore
    pool: Any


state = State()
app = Quart(__name__)


@app.before_serving
async def open_clients() -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    state.client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=5)
    state.slots = asyncio.Semaphore(CONCURRENCY)
    state.pool = await asyncmy.create_pool(
        host=os.environ["BENCH_DB_HOST"],
        port=int(os.environ["BENCH_DB_PORT"]),
        user=os.environ["BENCH_DB_USER"],
        password=os.environ["BENCH_DB_PASSWORD"],
        database=os.environ["BENCH_DB_NAME"],
        minsize=1,
        maxsize=10,
        autocommit=True,
    )


@app.after_serving
async def close_clients() -> None:
    await state.client.aclose()
    state.pool.close()
    await state.pool.wait_closed()


async def fetch(post_id: int) -> dict[str, Any]:
    try:
        async with asyncio.timeout(5), state.slots:
            response = await state.client.get(f"{BASE}/posts/{post_id}")
        response.raise_for_status()
        return {"id": post_id, "ok": True, "post": response.json(), "error": None}
    except Exception as error:
        return {"id": post_id, "ok": False, "post": None, "error": type(error).__name__}


@app.get("/api/v1/posts")
async def posts() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    ids = request.args["ids"].split(",")
    items = await asyncio.gather(*(fetch(int(i)) for i in ids))
    return {"items": items, "elapsed_ms": (loop.time() - started) * 1000}


@app.get("/db")
async def db() -> list[dict[str, Any]]:
    async with state.pool.acquire() as connection, connection.cursor(DictCursor) as cursor:
        await cursor.execute(USERS_SQL)
        return list(await cursor.fetchall())


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    """Serve this app as `python -m app` serves the service with one worker.

    The hypercorn settings (keep-alive limit, backlog, no server header, no access log,
    graceful timeout) come from the service's own `hypercorn_config`, built from its
    Settings read from the same environment (HOST, PORT, SHUTDOWN_GRACE), and only the
    application path differs; `serve_worker` then serves it as the service's single
    worker is served, on uvloop. Importing them loads the service's modules, though not
    its app: about 15 MB of this process's RSS that a floor of its own would not hold.
    """
    from app.__main__ import hypercorn_config
    from app.settings import Settings
    from app.workers import serve_worker

    settings = Settings()
    config = hypercorn_config(settings)
    config.application_path = "bench.peers.quart_floor:app"
    # hypercorn imports the app by that name: this module, not a second copy of it
    sys.modules.setdefault("bench.peers.quart_floor", sys.modules[__name__])
    # As app/asgi.py does: what exists at start-up is left out of every later collection.
    gc.collect()
    gc.freeze()
    serve_worker(config, config.create_sockets(), drain_seconds=0)


if __name__ == "__main__":
    main()
