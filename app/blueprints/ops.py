"""Operational routes: liveness, readiness, and the Prometheus metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response
from quart_schema import tag_blueprint, validate_response

from app import deps
from app.data.database import DatabaseUnavailable
from app.models import Health, Readiness
from app.telemetry.metrics import render
from app.web.errors import ApiError
from app.web.openapi import problems, text_response

READY_TIMEOUT = 1.0

blueprint = Blueprint("ops", __name__)
tag_blueprint(blueprint, ["operations"])


@blueprint.get("/healthz")
@validate_response(Health, 200)
async def healthz() -> Health:
    """Say whether the process serves.

    200 while the process serves; it says nothing about the database (see /readyz).
    """
    return Health()


@blueprint.get("/readyz")
@validate_response(Readiness, 200)
@problems(503)
async def readyz() -> Readiness:
    """Say whether this instance can serve requests that need the database.

    200 when the database answers a ping within a second and has every migration this
    version needs; 503 when it does not answer, with `code: schema_behind` when it lacks a
    migration, and with `code: draining` while the instance is stopping.
    """
    if deps.resources().drain.started:
        raise _not_ready("draining", "This instance is stopping; send new requests elsewhere.")
    database = deps.database()
    if not await database.ping(READY_TIMEOUT):
        raise DatabaseUnavailable("The database is not answering.")
    if missing := await database.missing_migrations(READY_TIMEOUT):
        raise _not_ready(
            "schema_behind",
            f"The database lacks migrations this version needs: {', '.join(missing)}. "
            "Run them (make migrate, or python -m app.migrate).",
        )
    return Readiness()


def _not_ready(code: str, detail: str) -> ApiError:
    return ApiError(503, detail, headers={"Retry-After": "5"}, code=code)


@blueprint.get("/metrics")
@text_response(CONTENT_TYPE_LATEST, "Prometheus text exposition format")
async def metrics() -> Response:
    """Expose the metrics, for Prometheus.

    Requests, upstream calls, the database pool and event-loop lag, in Prometheus' text
    exposition format.
    """
    # In a thread: with several workers it reads every worker's file from disk.
    return Response(await asyncio.to_thread(render), content_type=CONTENT_TYPE_LATEST)
