"""JSON answers serialised by cached pydantic TypeAdapters.

quart-schema's `validate_response` builds a new validator on every request; an adapter
built once per model validates and serialises the same way without that cost.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import TypeAdapter
from quart import Response

T = TypeVar("T")


def json_response(
    adapter: TypeAdapter[Any], value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        adapter.dump_json(value), status=status, headers=headers, content_type="application/json"
    )
