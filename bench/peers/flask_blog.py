"""The blog post's Flask app, as the post writes it, for the benchmark.

Flask 3 `async def` views (each request runs its own event loop in a worker thread), a
new aiohttp session and a new aiomysql connection per request, `str(results)` answers.
Only the URLs and the database settings come from the environment, and `/healthz` is
added so that the per-request overhead can be compared.

    gunicorn -k gthread --threads 32 -w 1 bench.peers.flask_blog:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import aiomysql
from flask import Flask

app = Flask(__name__)

URLS = os.environ["BENCH_UPSTREAM_URLS"].split(",")
DB = {
    "host": os.environ["BENCH_DB_HOST"],
    "port": int(os.environ["BENCH_DB_PORT"]),
    "user": os.environ["BENCH_DB_USER"],
    "password": os.environ["BENCH_DB_PASSWORD"],
    "db": os.environ["BENCH_DB_NAME"],
}


async def fetch(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        return await response.text()


async def make_api_calls() -> list[str]:
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(fetch(session, url)) for url in URLS]
        return await asyncio.gather(*tasks)


@app.route("/")
async def index() -> str:
    results = await make_api_calls()
    return str(results)


async def get_db_data() -> Any:
    conn = await aiomysql.connect(autocommit=True, **DB)
    cursor = await conn.cursor()
    await cursor.execute("SELECT * FROM users")
    results = await cursor.fetchall()
    await cursor.close()
    conn.close()
    return results


@app.route("/db")
async def db_route() -> str:
    results = await get_db_data()
    return str(results)


@app.route("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
