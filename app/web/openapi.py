"""The OpenAPI document: error answers as problem+json, 204s and 304s, and helpers to declare them.

quart-schema documents every response as `application/json`; our errors are
`application/problem+json` (RFC 9457), so the provider moves them there.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel
from quart_schema import OpenAPIProvider, document_response
from quart_schema.openapi import QUART_SCHEMA_OPERATION_ID_ATTRIBUTE
from quart_schema.validation import DataSource
from typing_extensions import is_typeddict
from werkzeug.routing import Rule

from app.models import Problem, ValidationProblem
from app.web.errors import PROBLEM_JSON

F = TypeVar("F", bound=Callable[..., Any])

NO_BODY_ATTRIBUTE = "_app_documents_no_body"
TEXT_ATTRIBUTE = "_app_documents_text"


def problems(*statuses: int) -> Callable[[F], F]:
    """Document the problem+json answers a route can give (422 lists its bad fields)."""

    def decorator(func: F) -> F:
        for status in statuses:
            model = ValidationProblem if status == 422 else Problem
            func = document_response(model, status)(func)
        return func

    return decorator


def no_body(*statuses: int) -> Callable[[F], F]:
    """Document answers without a body (204, 304): no model to give document_response."""

    def decorator(func: F) -> F:
        setattr(func, NO_BODY_ATTRIBUTE, (*getattr(func, NO_BODY_ATTRIBUTE, ()), *statuses))
        return func

    return decorator


no_content = no_body(204)


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

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # Inline, the same schema under several statuses or operations becomes a new class
        # each time in a generated client (three User classes, eight Problem classes).
        response, definitions = super().build_response_object(model, headers_model)
        if headers := response["content"].pop("headers", None):
            # quart-schema puts them inside `content`, where OpenAPI does not look
            response["headers"] = _header_objects(headers, headers_model)
        if _named(model):
            _to_component(response["content"]["application/json"], model, definitions)
        else:
            response["description"] = ""  # not list's docstring: build_paths fills the phrase
        return response, definitions

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, definitions = super().build_request_body(model, source)
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
        return parameters, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        for operations in paths.values():
            for operation in operations.values():
                if "requestBody" in operation:
                    # quart-schema leaves this out; our JSON bodies are never optional
                    operation["requestBody"]["required"] = True
                responses = operation["responses"]
                for status in getattr(func, NO_BODY_ATTRIBUTE, ()):
                    responses[status] = {}
                if text := getattr(func, TEXT_ATTRIBUTE, None):
                    media_type, description = text
                    responses[200] = {
                        "description": description,
                        "content": {media_type: {"schema": {"type": "string"}}},
                    }
                for status, response in responses.items():
                    content = response.get("content", {})
                    if int(status) >= 400 and "application/json" in content:
                        response["content"] = {PROBLEM_JSON: content.pop("application/json")}
                    if not response.get("description"):
                        response["description"] = HTTPStatus(int(status)).phrase
        return paths, components


def _header_objects(headers: dict[str, Any], model: Any) -> dict[str, Any]:
    required = set(model.model_json_schema().get("required", []))
    objects = {}
    for name, spec in headers.items():
        schema = dict(spec["schema"])
        schema.pop("title", None)
        description = schema.pop("description", "")
        if name not in required:
            schema = {"type": "string"}  # optional: absent, not null
        objects[name] = {"description": description, "required": name in required, "schema": schema}
    return objects


def _named(model: object) -> bool:
    """A model of its own (a pydantic model or a TypedDict), not a list or Any."""
    return isinstance(model, type) and (issubclass(model, BaseModel) or is_typeddict(model))


def _to_component(media: dict[str, Any], model: type[Any], definitions: dict[str, Any]) -> None:
    """Move the model's schema to components/schemas/<its name> and point at it there."""
    definitions[model.__name__] = media["schema"]
    media["schema"] = {"$ref": f"#/components/schemas/{model.__name__}"}
