"""respx routes answering as a test asks: with an answer, or by raising."""

from __future__ import annotations

import httpx
import respx


def mock_answer(route: respx.Route, with_: httpx.Response | Exception) -> respx.Route:
    if isinstance(with_, Exception):
        return route.mock(side_effect=with_)
    return route.mock(return_value=with_)
