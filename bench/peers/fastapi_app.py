"""The same two jobs in FastAPI + uvicorn, configured as well as we know how.

One shared httpx client over an aiohttp transport (httpx's own pool collapses under
fan-out), one asyncmy pool with autocommit, pydantic response models.

    uvicorn bench.peers.fastapi_app:app --workers 1 --loop uvloop --http httptools
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncmy
import httpx
from asyncmy.cursors import DictCursor
from fastapi import FastAPI, Query, Request
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel

BASE = os.environ["BENCH_UPSTREAM_BASE_URL"].rstrip("/")
CONCURRENCY = int(os.environ.get("BENCH_UPSTREAM_MAX_CONCURRENCY", "100"))


class Post(BaseModel):
    userId: int
    id: int
    title: str
    body: str


class Item(BaseModel):
    id: int
    ok: bool
    post: Post | None = None
    error: str | None = None


class Batch(BaseModel):
    items: list[Item]
    elapsed_ms: float


class User(BaseModel):
    id: int
    name: str
    email: str
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    items: list[User]
    next_after: int | None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    app.state.client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=5)
    app.state.slots = asyncio.Semaphore(CONCURRENCY)
    app.state.pool = await asyncmy.create_pool(
        host=os.environ["BENCH_DB_HOST"],
        port=int(os.environ["BENCH_DB_PORT"]),
        user=os.environ["BENCH_DB_USER"],
        password=os.environ["BENCH_DB_PASSWORD"],
        database=os.environ["BENCH_DB_NAME"],
        minsize=1,
        maxsize=10,
        autocommit=True,
    )
    yield
    await app.state.client.aclose()
    app.state.pool.close()
    await app.state.pool.wait_closed()


app = FastAPI(lifespan=lifespan)


async def fetch(request: Request, post_id: int) -> Item:
    try:
        async with asyncio.timeout(5), request.app.state.slots:
            response = await request.app.state.client.get(f"{BASE}/posts/{post_id}")
        response.raise_for_status()
        return Item(id=post_id, ok=True, post=Post.model_validate(response.json()))
    except Exception as error:
        return Item(id=post_id, ok=False, error=type(error).__name__)


@app.get("/api/v1/posts")
async def posts(request: Request, ids: str) -> Batch:
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = await asyncio.gather(*(fetch(request, int(i)) for i in ids.split(",")))
    return Batch(items=list(items), elapsed_ms=(loop.time() - started) * 1000)


async def select_users(request: Request, limit: int, after: int = 0) -> list[dict[str, Any]]:
    pool = request.app.state.pool
    async with pool.acquire() as connection, connection.cursor(DictCursor) as cursor:
        await cursor.execute(
            "SELECT id, name, email, created_at, updated_at FROM users"
            " WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit),
        )
        rows: list[dict[str, Any]] = await cursor.fetchall()
        return rows


@app.get("/api/v1/users")
async def users(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Page:
    rows = await select_users(request, limit + 1, after)
    items = [User.model_validate(row) for row in rows[:limit]]
    return Page(items=items, next_after=items[-1].id if len(rows) > limit else None)


@app.get("/db")
async def db(request: Request) -> list[User]:
    return [User.model_validate(row) for row in await select_users(request, 1000)]


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
