"""The JSON log lines and what reaches them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from app import create_app
from app.telemetry.logs import JsonLineFormatter, configure_logging, request_id_var
from tests.support.settings import make_settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)


def test_a_line_is_one_json_object_with_the_request_id_and_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "app.access", "levelname": "INFO", "msg": "request", "status": 404}
    )
    token = request_id_var.set("req-42")
    try:
        line = JsonLineFormatter().format(record)
    finally:
        request_id_var.reset(token)

    parsed = json.loads(line)
    assert "\n" not in line
    assert parsed["message"] == "request"
    assert parsed["request_id"] == "req-42"
    assert parsed["status"] == 404
    assert {"time", "level", "logger", "pid"} <= set(parsed)


@pytest.mark.parametrize(
    "created",
    [
        1_764_806_400.0,
        1_764_806_400.0005,
        1_764_806_400.9994996,
        1_764_806_400.9999996,
        1_764_806_459.123,
    ],
    ids=["a whole second", "half a millisecond", "just under", "rounds up a second", "any"],
)
def test_a_line_s_time_is_rfc_3339_in_utc_to_the_millisecond(created: float) -> None:
    record = logging.makeLogRecord({"name": "app", "msg": "m", "created": created})

    line = json.loads(JsonLineFormatter().format(record))

    assert line["time"] == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("level", "per_call_lines"), [("info", False), ("debug", True)])
def test_httpx_logs_each_upstream_call_only_at_debug(level: str, per_call_lines: bool) -> None:
    configure_logging(level)

    assert logging.getLogger("httpx").isEnabledFor(logging.INFO) is per_call_lines


async def test_refusals_before_any_route_carry_the_request_id_and_a_log_line(
    migrated: str, caplog: pytest.LogCaptureFixture
) -> None:
    # pinned by the order of the request hooks in create_app
    settings = make_settings(migrated, api_token="t", write_rate_limit="1/minute")
    app = create_app(settings.model_copy(update={"max_body_bytes": 1024}))
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    caplog.set_level(logging.INFO, logger="app.access")

    async with app.test_app() as running:
        client = running.test_client()
        too_large = await client.post(
            "/api/v1/users", data=b'{"name": "' + b"x" * 2048 + b'"}',
            headers={**headers, "X-Request-ID": "too-large-1"},
        )  # fmt: skip
        limited = await client.post(
            "/api/v1/users", json={"name": "a", "email": "a@example.com"},
            headers={**headers, "X-Request-ID": "limited-1"},
        )  # fmt: skip

    assert (too_large.status_code, limited.status_code) == (413, 429)
    assert too_large.headers["X-Request-ID"] == "too-large-1"
    assert limited.headers["X-Request-ID"] == "limited-1"
    logged = {
        (getattr(record, "request_id", None), getattr(record, "status", None))
        for record in caplog.records
        if record.name == "app.access"
    }
    assert {("too-large-1", 413), ("limited-1", 429)} <= logged
