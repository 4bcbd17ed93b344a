"""Operational routes: liveness and readiness (/metrics lives in app.telemetry.metrics)."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import tag, validate_response

from app import deps
from app.models import Health, Readiness
from app.web.errors import ApiError
from app.web.openapi import problems

READY_TIMEOUT = 1.0

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
@tag(["operations"])
@validate_response(Health, 200)
async def healthz() -> Health:
    """200 while the process serves; says nothing about the database (see /readyz)."""
    return Health()


@blueprint.get("/readyz")
@tag(["operations"])
@validate_response(Readiness, 200)
@problems(503)
async def readyz() -> Readiness:
    """200 when the database answers a ping within a second; 503 when it does not."""
    if not await deps.database().ping(READY_TIMEOUT):
        raise ApiError(503, "The database is not answering.", headers={"Retry-After": "1"})
    return Readiness()
