"""The app factory: `create_app(settings)` builds one Quart app.

Flask users will recognise every piece: an app factory, blueprints, error handlers,
before/after hooks. What is new is `before_serving`/`after_serving` (app.lifespan),
where the process-wide HTTP client and database pool are opened on the serving loop.
"""

from __future__ import annotations

import httpx
from quart import Quart
from quart_cors import cors
from quart_schema import HttpSecurityScheme, Info, QuartSchema, Server, Tag

from app.blueprints import docs, ops, original, posts, users
from app.lifespan import register_lifespan
from app.settings import Settings
from app.telemetry.loop_monitor import LoopMonitor
from app.telemetry.requests import register_observability
from app.telemetry.tracing import start_tracing
from app.web.errors import register_error_handlers
from app.web.hosts import register_host_check
from app.web.keep_alive import register_connection_keeping
from app.web.openapi import ProblemAwareOpenAPIProvider
from app.web.proxies import TrustedProxies
from app.web.rate_limit import register_write_budget
from app.web.serialization import PydanticJSONProvider, use_cached_type_adapters
from app.web.writes import BEARER

# The API contract's version (docs/openapi.json); CHANGELOG.md says what each one changed.
API_VERSION = "1.1.0"


def create_app(
    settings: Settings | None = None, *, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> Quart:
    settings = settings if settings is not None else Settings()
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is not set")

    app = Quart(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    QuartSchema(
        app,
        info=Info(
            title="Quart async demo",
            version=API_VERSION,
            description="The blog post's async Flask app, ported to Quart. Errors are "
            "application/problem+json (RFC 9457); writes need `Authorization: Bearer`.",
            # dicts: quart-schema would write a License's or Contact's unset fields as null
            license={"name": "MIT", "identifier": "MIT"},  # type: ignore[arg-type]
            contact={"name": "The quart-async-demo maintainers"},  # type: ignore[arg-type]
        ),
        # wherever this document is served from: clients call the host that served it
        servers=[Server(url="/", description="this service")],
        tags=[
            Tag(name="original", description="The blog post's two routes, kept as they were."),
            Tag(name="posts", description="Posts from the upstream API, one or many at once."),
            Tag(name="users", description="Users in the database; writes need the token."),
            Tag(name="operations", description="Liveness, readiness and metrics."),
        ],
        openapi_path="/openapi.json",
        # /docs is ours (app.blueprints.docs): quart-schema's pages load from CDNs
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={BEARER: HttpSecurityScheme(scheme="bearer")},
        openapi_provider_class=ProblemAwareOpenAPIProvider,
        # RFC 3339 times, not the RFC 822 form Quart's JSON provider would give; "mode"
        # works at run time but is missing from quart-schema's PydanticDumpOptions type.
        pydantic_dump_options={"mode": "json"},  # type: ignore[arg-type]
    )

    # After QuartSchema, which installs a JSON provider of its own.
    app.json = PydanticJSONProvider(app)
    use_cached_type_adapters()

    monitor = LoopMonitor(threshold=settings.loop_block_threshold)
    register_lifespan(app, settings, upstream_transport, monitor)
    # spent by each write once its token is checked (app.web.writes)
    register_write_budget(app, settings.write_rate_limit, settings.rate_limit_storage_url)
    register_error_handlers(app)

    # Request hooks, in the order they must run. Quart runs before_request hooks in the
    # order they were registered and after_request hooks in the reverse order, so:
    # 1. the request's id, log line and metrics: first to see a request, last to see its
    #    answer, whatever refused it (a 429, a 413) or changed it (Connection: close);
    register_observability(app, monitor)
    # 2. a Host the grammar refuses: a 400 before anything reads it;
    register_host_check(app)
    # 3. first to see an error answer: lets a refused body arrive, or says close.
    register_connection_keeping(app)

    for module in (original, posts, users, ops, docs):
        app.register_blueprint(module.blueprint)
    # OTEL_* variables: a server span around each request (app.telemetry.tracing)
    traced = start_tracing()
    if traced is not None:
        app.asgi_app = traced.wrap(app.asgi_app)  # type: ignore[method-assign,assignment]
    if settings.trusted_proxies:
        # outside the tracing: a caller it does not trust cannot continue a trace
        app.asgi_app = TrustedProxies(  # type: ignore[method-assign]
            app.asgi_app,
            settings.trusted_proxies,
            trace_headers=traced.trace_headers if traced is not None else frozenset(),
        )
    if settings.cors_origins:
        app = cors(
            app,
            allow_origin=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "If-Match",
                "If-None-Match",
            ],
            # a browser app reads these only when named (Cache-Control it always may)
            expose_headers=[
                "Location",
                "Retry-After",
                "X-Request-ID",
                "ETag",
                "Age",
                "Cache-Status",
            ],
            max_age=600,
        )
    return app
