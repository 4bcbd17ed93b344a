"""What lives as long as the serving process: one HTTP client, one database pool, the loop
monitor, held together in one typed `Resources`.

One `while_serving` generator opens them on the serving event loop and, when serving
stops, closes them in the reverse order (an exit stack). They are kept on the app, not on
`g`, which is reset after start-up; routes reach them through `app.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx
from quart import Quart

from app.data.database import Database
from app.data.http_cache import open_storage
from app.data.migrate import load_migrations, migrate
from app.data.upstream import Upstream
from app.data.upstream_client import open_client
from app.settings import Settings
from app.telemetry import tracing
from app.telemetry.loop_monitor import LoopMonitor

RESOURCES = "app.resources"

log = logging.getLogger(__name__)


class Drain:
    """Whether this process has been told to stop and is draining (app.workers)."""

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True


@dataclass(frozen=True)
class Resources:
    settings: Settings
    upstream: Upstream
    database: Database
    drain: Drain


def resources_of(app: Quart) -> Resources:
    resources: Resources = app.extensions[RESOURCES]
    return resources


def start_draining(app: Quart) -> None:
    """Told to stop: /readyz answers 503 and every answer says `Connection: close`."""
    resources: Resources | None = app.extensions.get(RESOURCES)
    if resources is not None:  # None: still starting, nothing is served yet
        resources.drain.start()


def draining(app: Quart) -> bool:
    resources: Resources | None = app.extensions.get(RESOURCES)
    return resources is not None and resources.drain.started


def register_lifespan(
    app: Quart,
    settings: Settings,
    upstream_transport: httpx.AsyncBaseTransport | None,
    monitor: LoopMonitor,
) -> None:
    database_url = settings.database_url
    assert database_url is not None  # create_app refuses to build without one

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        async with contextlib.AsyncExitStack() as stack:
            storage = open_storage(
                settings.upstream_cache,
                max_bytes=settings.upstream_cache_max_bytes,
                max_entry_bytes=settings.upstream_max_body_bytes,
                stale_if_error=settings.upstream_stale_if_error,
            )
            client = open_client(
                max_concurrency=settings.upstream_max_concurrency,
                timeout=settings.upstream_timeout,
                storage=storage,
                keep_unusable=(
                    settings.upstream_stale_if_error > 0
                    or settings.upstream_stale_while_revalidate > 0
                ),
                transport=upstream_transport,
            )
            upstream = Upstream(
                client,
                base_url=str(settings.upstream_base_url),
                timeout=settings.upstream_timeout,
                max_concurrency=settings.upstream_max_concurrency,
                max_body_bytes=settings.upstream_max_body_bytes,
                storage=storage,
                stale_if_error=settings.upstream_stale_if_error,
                stale_while_revalidate=settings.upstream_stale_while_revalidate,
                coalesce=settings.upstream_coalesce,
                retries=settings.upstream_retries,
                hedge_after=settings.hedge_after_seconds,
                breaker=settings.breaker_rule,
            )
            stack.push_async_callback(upstream.aclose)  # the client, and the cache's storage
            database = Database(
                database_url,
                minsize=settings.db_pool_min,
                maxsize=settings.db_pool_max,
                query_timeout=settings.db_query_timeout,
                pool_timeout=settings.db_pool_timeout,
                prepare=migrate if settings.migrate_on_start else None,
                required_migrations={m.version: m.label for m in load_migrations()},
            )
            stack.push_async_callback(database.close)
            await database.start()
            app.extensions[RESOURCES] = Resources(settings, upstream, database, Drain())
            app.extensions["QUART_SCHEMA"].openapi_provider.schema()  # built now, not per request
            monitor.on_tick = database.report_pool
            monitor.start()
            stack.push_async_callback(monitor.stop)
            yield
        if tracing.active is not None:
            # what is queued goes to the collector, from a thread, for a few seconds
            await asyncio.to_thread(tracing.active.shutdown)
        log.info("stopped serving; HTTP client and database pool closed")
