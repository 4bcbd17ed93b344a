"""Operational routes."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import document_response, tag

from app.models import Health

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
@tag(["operations"])
@document_response(Health, 200)
async def healthz() -> dict[str, str]:
    """200 while the process serves; says nothing about the database (see /readyz)."""
    return {"status": "ok"}
