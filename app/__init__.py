"""The app factory: `create_app(settings)` builds one Quart app.

Flask users will recognise every piece: an app factory, blueprints, error handlers,
before/after hooks. What is new is `before_serving`/`after_serving` (app.lifecycle),
where the process-wide HTTP client and database pool are opened on the serving loop.
"""

from __future__ import annotations

import httpx
from quart import Quart
from quart_schema import Info, QuartSchema

from app.blueprints import ops, original
from app.lifecycle import register_lifecycle
from app.logs import register_request_logging
from app.problems import register_error_handlers
from app.settings import Settings


def create_app(
    settings: Settings | None = None, *, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> Quart:
    settings = settings if settings is not None else Settings()
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is not set")

    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Keep the key order of our models in answers, and answer in UTF-8.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    QuartSchema(
        app,
        info=Info(title="Quart async demo", version="1.0.0"),
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        # RFC 3339 times, not the RFC 822 form Quart's JSON provider would give; "mode"
        # works at run time but is missing from quart-schema's PydanticDumpOptions type.
        pydantic_dump_options={"mode": "json"},  # type: ignore[arg-type]
    )

    register_lifecycle(app, settings, upstream_transport)
    register_request_logging(app)
    register_error_handlers(app)
    app.register_blueprint(original.blueprint)
    app.register_blueprint(ops.blueprint)
    return app
