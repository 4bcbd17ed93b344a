"""The OpenAPI document, built from the routes, their decorators and the pydantic models.

quart-schema writes most of it. What it cannot know, this module adds, each from the code
that does it, never by editing the JSON afterwards:

- error answers are `application/problem+json` (RFC 9457), with the headers each status
  carries (401 `WWW-Authenticate`, 412 `ETag`, 429 and 503 `Retry-After`);
- answers without a body (204, 304) and the text answer of /metrics;
- the request headers a route reads (`If-None-Match`, `If-Match`) as parameters, and
  `X-Request-ID` on every operation and every answer (app.telemetry.requests);
- `security: []` on the operations anyone may call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from quart_schema import OpenAPIProvider, document_response
from quart_schema.openapi import QUART_SCHEMA_OPERATION_ID_ATTRIBUTE
from quart_schema.validation import DataSource
from typing_extensions import is_typeddict
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter, IntegerConverter, Rule

from app.models import (
    ChallengeHeaders,
    CurrentTagHeaders,
    Problem,
    RetryAfterHeaders,
    ValidationProblem,
)
from app.telemetry.requests import REQUEST_ID_HEADER, VALID_REQUEST_ID
from app.web.errors import PROBLEM_JSON

F = TypeVar("F", bound=Callable[..., Any])

NO_BODY_ATTRIBUTE = "_app_documents_no_body"
TEXT_ATTRIBUTE = "_app_documents_text"
REQUEST_HEADERS_ATTRIBUTE = "_app_documents_request_headers"

# The headers an error answer of this status always carries.
PROBLEM_HEADERS: dict[int, type[BaseModel]] = {
    401: ChallengeHeaders,
    412: CurrentTagHeaders,
    429: RetryAfterHeaders,
    503: RetryAfterHeaders,
}

# The request headers a route may read, and what the service does with each.
REQUEST_HEADERS = {
    "If-None-Match": "ETags the client holds; when one is current the answer is 304 with no body.",
    "If-Match": "Change only the version this ETag names; any other current version answers"
    " 412 and changes nothing. `*` matches whatever version exists.",
    REQUEST_ID_HEADER: "Echoed in the answer and the request's log line when it is 1 to 128"
    " letters, digits, `-`, `_`, `.` or `:`; anything else is replaced by a new id.",
}


def problems(*statuses: int) -> Callable[[F], F]:
    """Document the problem+json answers a route can give (422 lists its bad fields)."""

    def decorator(func: F) -> F:
        for status in statuses:
            model = ValidationProblem if status == 422 else Problem
            func = document_response(model, status, PROBLEM_HEADERS.get(status))(func)
        return func

    return decorator


def no_body(status: int, headers: type[BaseModel] | None = None) -> Callable[[F], F]:
    """Document an answer without a body (204, 304), with the headers it carries."""

    def decorator(func: F) -> F:
        documented = (*getattr(func, NO_BODY_ATTRIBUTE, ()), (status, headers))
        setattr(func, NO_BODY_ATTRIBUTE, documented)
        return func

    return decorator


def request_headers(*names: str) -> Callable[[F], F]:
    """Document request headers the route reads (names from REQUEST_HEADERS)."""

    def decorator(func: F) -> F:
        setattr(
            func, REQUEST_HEADERS_ATTRIBUTE, (*getattr(func, REQUEST_HEADERS_ATTRIBUTE, ()), *names)
        )
        return func

    return decorator


def text_response(media_type: str, description: str) -> Callable[[F], F]:
    """Document a 200 answer that is text, not JSON (the Prometheus exposition)."""

    def decorator(func: F) -> F:
        setattr(func, TEXT_ATTRIBUTE, (media_type, description))
        return func

    return decorator


class ProblemAwareOpenAPIProvider(OpenAPIProvider):
    _document: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        # Building the document walks every route and model: about 20 ms of CPU here,
        # over 100 ms on a loaded machine, with every request in flight waiting. The
        # routes are fixed once serving starts, so it is built once (app.lifespan does
        # it before serving).
        if self._document is None:
            self._document = super().schema()
        return self._document

    def operation_id(self, method: str, path: str, func: Callable[..., Any]) -> str | None:
        # quart-schema gives f"{method}_{name}" (get_get_user); each view serves one method
        # and its name is already a verb phrase: listUsers, createUser, getPost.
        explicit: str | None = getattr(func, QUART_SCHEMA_OPERATION_ID_ATTRIBUTE, None)
        first, *rest = func.__name__.split("_")
        return explicit or first + "".join(word.capitalize() for word in rest)

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if isinstance(converter, IntegerConverter) and not converter.signed:
            parameter["schema"]["minimum"] = 0  # werkzeug's int matches no sign: -1 is a 404
        return parameter

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # Inline, the same schema under several statuses or operations becomes a new class
        # each time in a generated client (three User classes, eight Problem classes).
        response, definitions = super().build_response_object(model, headers_model)
        response["content"].pop("headers", None)  # where quart-schema puts them; see below
        response["headers"] = _header_objects(headers_model)
        if _named(model):
            _to_component(response["content"]["application/json"], model, definitions)
        else:
            response["description"] = ""  # not list's docstring: build_paths fills the phrase
        return response, definitions

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, definitions = super().build_request_body(model, source)
        # quart-schema leaves this out; our JSON bodies are never optional
        body["required"] = True
        if _named(model):
            for media in body["content"].values():
                _to_component(media, model, definitions)
        return body, definitions

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # quart-schema leaves out which query parameters are required (`ids` is).
        parameters, definitions = super().build_querystring_parameters(model)
        required = set(model.model_json_schema().get("required", []))
        for parameter in parameters:
            parameter["required"] = parameter["name"] in required
            parameter["schema"].pop("title", None)
        return parameters, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        for operations in paths.values():
            for operation in operations.values():
                # quart-schema shares one dict of parameters and responses between methods
                operation["parameters"] = [
                    *operation["parameters"],
                    *(
                        _header_parameter(name)
                        for name in (
                            *getattr(func, REQUEST_HEADERS_ATTRIBUTE, ()),
                            REQUEST_ID_HEADER,
                        )
                    ),
                ]
                operation.setdefault("security", [])  # public: no credentials needed
                responses = operation["responses"] = dict(operation["responses"])
                for status, headers in getattr(func, NO_BODY_ATTRIBUTE, ()):
                    responses[status] = {"headers": _header_objects(headers)}
                if text := getattr(func, TEXT_ATTRIBUTE, None):
                    media_type, description = text
                    responses[200] = {
                        "description": description,
                        "headers": _header_objects(None),
                        "content": {media_type: {"schema": {"type": "string"}}},
                    }
                for status, response in responses.items():
                    content = response.get("content", {})
                    if int(status) >= 400 and "application/json" in content:
                        response["content"] = {PROBLEM_JSON: content.pop("application/json")}
                    if int(status) >= 400 or not response.get("description"):
                        response["description"] = HTTP_STATUS_CODES[int(status)]
        return paths, components


def _header_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": REQUEST_HEADERS[name],
        "schema": {"type": "string"},
    }


def _header_objects(model: type[BaseModel] | None) -> dict[str, Any]:
    """The response headers `model` declares (by alias), and X-Request-ID, which every
    answer carries."""
    objects: dict[str, Any] = {}
    if model is not None:
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        for name, spec in schema["properties"].items():
            spec = {key: value for key, value in spec.items() if key != "title"}
            description = spec.pop("description", "")
            if name not in required:
                spec = {"type": "string"}  # optional: absent, not null
            objects[name] = {
                "description": description,
                "required": name in required,
                "schema": spec,
            }
    objects[REQUEST_ID_HEADER] = {
        "description": "the request's id: the client's own when it sent a valid one",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{VALID_REQUEST_ID.pattern}$"},
    }
    return objects


def _named(model: object) -> bool:
    """A model of its own (a pydantic model or a TypedDict), not a list or Any."""
    return isinstance(model, type) and (issubclass(model, BaseModel) or is_typeddict(model))


def _to_component(media: dict[str, Any], model: type[Any], definitions: dict[str, Any]) -> None:
    """Move the model's schema to components/schemas/<its name> and point at it there."""
    definitions[model.__name__] = media["schema"]
    media["schema"] = {"$ref": f"#/components/schemas/{model.__name__}"}
