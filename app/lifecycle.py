"""What lives as long as the process: the settings, one HTTP client, one database pool.

`before_serving` opens them and `after_serving` closes them, on the serving event loop.
They are kept in `app.extensions`, not on `g`, which is reset after start-up.
"""

from __future__ import annotations

import logging

import httpx
from quart import Quart, current_app

from app.db import Database
from app.loop_monitor import LoopMonitor
from app.settings import Settings
from app.upstream import Upstream, open_client

log = logging.getLogger(__name__)


def register_lifecycle(
    app: Quart,
    settings: Settings,
    upstream_transport: httpx.AsyncBaseTransport | None,
    monitor: LoopMonitor,
) -> None:
    app.extensions["settings"] = settings

    @app.before_serving
    async def open_resources() -> None:
        client = open_client(settings, upstream_transport)
        app.extensions["upstream"] = Upstream(
            client,
            base_url=str(settings.upstream_base_url),
            timeout=settings.upstream_timeout,
            max_concurrency=settings.upstream_max_concurrency,
            max_body_bytes=settings.upstream_max_body_bytes,
        )
        assert settings.database_url is not None  # create_app refuses to build without one
        database = Database(
            settings.database_url,
            minsize=settings.db_pool_min,
            maxsize=settings.db_pool_max,
            query_timeout=settings.db_query_timeout,
            pool_timeout=settings.db_pool_timeout,
        )
        app.extensions["database"] = database
        await database.start()
        app.extensions["QUART_SCHEMA"].openapi_provider.schema()  # built now, not per request
        monitor.on_tick = database.report_pool
        monitor.start()

    @app.after_serving
    async def close_resources() -> None:
        await monitor.stop()
        await app.extensions["upstream"].client.aclose()
        await app.extensions["database"].close()
        log.info("stopped serving; HTTP client and database pool closed")


def get_settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings


def get_upstream() -> Upstream:
    upstream: Upstream = current_app.extensions["upstream"]
    return upstream


def get_database() -> Database:
    database: Database = current_app.extensions["database"]
    return database
