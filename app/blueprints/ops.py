"""Operational routes."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint
from quart_schema import document_response, tag

blueprint = Blueprint("ops", __name__)


class Health(BaseModel):
    status: str = "ok"


@blueprint.get("/healthz")
@tag(["operations"])
@document_response(Health, 200)
async def healthz() -> dict[str, str]:
    """200 while the process serves; says nothing about the database (see /readyz)."""
    return {"status": "ok"}
