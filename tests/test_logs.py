"""The JSON log lines and what reaches them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.telemetry.logs import JsonLineFormatter, configure_logging, request_id_var


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


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("level", "per_call_lines"), [("info", False), ("debug", True)])
def test_httpx_logs_each_upstream_call_only_at_debug(level: str, per_call_lines: bool) -> None:
    configure_logging(level)

    assert logging.getLogger("httpx").isEnabledFor(logging.INFO) is per_call_lines
