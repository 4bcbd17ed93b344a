"""What a route may depend on, in one place: the settings, the upstream, the database.

Each is the one the lifespan opened for this process (app.lifespan).
"""

from __future__ import annotations

from quart import current_app

from app.data.database import Database
from app.data.upstream import Upstream
from app.lifespan import Resources, resources_of
from app.settings import Settings


def resources() -> Resources:
    return resources_of(current_app)


def settings() -> Settings:
    return resources().settings


def upstream() -> Upstream:
    return resources().upstream


def database() -> Database:
    return resources().database
