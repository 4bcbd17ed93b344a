"""The few private parts of libraries the service relies on, each checked so that an
upgrade that changes one fails here, loudly, rather than in production, quietly.

- quart's request Body marks the end of a body with an `asyncio.Event` `_complete`
  (app.web.keep_alive waits on it before answering a refusal; there is no public way).
- werkzeug's `LocalProxy._get_current_object()` (documented, despite its underscore): the
  request hooks look the request up once rather than through the proxy each time.
- logging's `_srcfile`, set to None to skip the caller look-up on every log line (the
  logging HOWTO's "Optimization" section documents it).
- quart-schema's conversion module builds a pydantic `TypeAdapter` by that module-level
  name on every validation; app.web.serialization swaps in a cached one (one per type).
- hypercorn's `H11Protocol._check_protocol` is where a cleartext connection switches to
  HTTP/2; app.workers replaces it unless HTTP2 is on. Its `_send_error_response(status)`
  answers what h11 cannot parse; app.workers replaces it to answer a problem.
- hishel's `AsyncRedisStorage` keeps `_client`, `_data_keys`, `_idx_key` and
  `_extend_expiry`; app.data.http_cache's `ServableRedisStorage` uses them to renew an
  entry's time in Redis after a 304 (checked against a real Redis in
  tests/test_upstream_cache.py, test_a_revalidated_redis_entry_lives_...).
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import quart_schema.conversion
from hypercorn.protocol.h11 import H11Protocol
from quart import Request, request
from quart.wrappers.request import Body
from quart_schema import validate_response

from app import create_app
from app.web.serialization import cached_type_adapter
from tests.support.settings import make_settings


def test_quart_s_body_says_when_it_is_complete() -> None:
    body = Body(expected_content_length=1, max_content_length=10)

    assert isinstance(body._complete, asyncio.Event)
    body.append(b"x")
    body.set_complete()
    assert body._complete.is_set()


async def test_the_request_proxy_gives_the_request_itself() -> None:
    app = create_app(make_settings("mysql://u:p@127.0.0.1:1/db"))

    async with app.test_request_context("/healthz"):
        current = request._get_current_object()  # type: ignore[attr-defined]

        assert isinstance(current, Request)
        assert current.path == "/healthz"


def test_logging_still_has_the_caller_look_up_switch() -> None:
    assert hasattr(logging, "_srcfile")


async def test_quart_schema_validates_through_the_cached_type_adapter() -> None:
    app = create_app(make_settings("mysql://u:p@127.0.0.1:1/db"))

    @app.get("/canary")
    @validate_response(dict[str, int], 200)
    async def canary() -> dict[str, int]:
        return {"n": 1}

    cached_type_adapter.cache_clear()
    response = await app.test_client().get("/canary")

    assert response.status_code == 200
    assert getattr(quart_schema.conversion, "TypeAdapter") is cached_type_adapter  # noqa: B009
    assert cached_type_adapter.cache_info().currsize >= 1


def test_hypercorn_decides_on_cleartext_http2_in_one_method() -> None:
    # app.workers.serve_http11_only replaces it: the one place a cleartext connection
    # switches to HTTP/2 (prior knowledge or Upgrade: h2c).
    source = inspect.getsource(H11Protocol._check_protocol)

    assert "H2CProtocolRequiredError" in source
    assert "H2ProtocolAssumedError" in source


def test_hypercorn_answers_what_it_cannot_parse_in_one_method() -> None:
    # app.workers.answer_unparsed_requests_with_problems replaces it
    parameters = list(inspect.signature(H11Protocol._send_error_response).parameters)

    assert parameters == ["self", "status_code"]
    assert "_send_error_response" in inspect.getsource(H11Protocol._handle_events)
