"""`/docs`: Swagger UI served entirely by this service, no CDN.

The page and its assets (from the pinned flask-swagger-ui package, which ships Swagger
UI's dist files) come from here, so the docs render with no network beyond the service.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from quart import Blueprint, Response, render_template_string, send_from_directory, url_for
from quart_schema import hide

from app.web.errors import ApiError

SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "favicon-16x16.png"}

blueprint = Blueprint("docs", __name__)

# validatorUrl null: otherwise Swagger UI asks validator.swagger.io to check the document.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{{ title }}</title>
  <link rel="stylesheet" href="{{ url_for('docs.asset', filename='swagger-ui.css') }}">
  <link rel="icon" href="{{ url_for('docs.asset', filename='favicon-32x32.png') }}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{{ url_for('docs.asset', filename='swagger-ui-bundle.js') }}"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "{{ openapi_url }}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      persistAuthorization: false,
    });
  </script>
</body>
</html>
"""


@blueprint.get("/docs")
@hide
async def docs() -> str:
    return await render_template_string(
        PAGE, title="Quart async demo: API docs", openapi_url=url_for("openapi")
    )


@blueprint.get("/docs/assets/<path:filename>")
@hide
async def asset(filename: str) -> Response:
    if filename not in ASSETS:
        raise ApiError(404, "No such docs asset.")
    response = await send_from_directory(SWAGGER_UI_DIST, filename)
    response.cache_control.public = True
    response.cache_control.max_age = 86400
    return response
