"""JSON log lines on stderr, each carrying the id of the request it belongs to."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter
from quart import Quart, Response, g, request

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# A context variable rather than `g`: tasks started by a request (the upstream fan-out)
# copy the context, so their log lines carry the id too.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

access_log = logging.getLogger("app.access")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}{process}",
            style="{",
            timestamp="time",
            # pid: with WORKERS > 1, which worker wrote the line
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        )
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def new_request_id() -> str:
    return uuid.uuid4().hex


def register_request_logging(app: Quart) -> None:
    @app.before_request
    async def assign_request_id() -> None:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if VALID_REQUEST_ID.match(offered) else new_request_id()
        request_id_var.set(request_id)
        g.request_id = request_id
        g.started = time.perf_counter()

    @app.after_request
    async def log_request(response: Response) -> Response:
        request_id = g.get("request_id") or new_request_id()
        response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("started")
        access_log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "route": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)
                if started
                else None,
                "client": request.remote_addr,
            },
        )
        return response
