"""`python -m app`: check the settings, then serve `app.asgi:app` with hypercorn.

Server settings live here, in one place, taken from the same Settings class as the app.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from hypercorn.config import Config

from app.settings import Settings
from app.workers import serve_worker, supervise

log = logging.getLogger("app.serve")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.application_path = "app.asgi:app"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    # app.workers starts, replaces and stops the processes (each on uvloop), not hypercorn
    config.workers = 0
    config.graceful_timeout = settings.shutdown_grace
    config.backlog = 2048
    # Our own request log (app.telemetry.requests) carries the request id; hypercorn's would
    # repeat it.
    config.accesslog = None
    # hypercorn closes a kept-alive connection after 1,000 requests by default; a busy
    # client then pays a new connection every 1,000 requests.
    config.keep_alive_max_requests = 100_000
    # No "server: hypercorn-h11" on every answer: nothing for a scanner, less per answer.
    config.include_server_header = False
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def main() -> None:
    from app.runtime import settings  # reads the settings and sets up logging, once

    base = f"http://{settings.host}:{settings.port}"
    # For the person at the terminal; the JSON logs go to stderr.
    print(f"serving {base}/  docs: {base}/docs  (Ctrl-C stops)", flush=True)
    log.info("serving", extra={"docs": f"{base}/docs", "workers": settings.workers})
    config = hypercorn_config(settings)
    if settings.workers == 1:
        serve_worker(config, config.create_sockets(), settings.drain_seconds)
        sys.exit(0)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    created = metrics_dir is None
    if metrics_dir is None:
        # Each worker writes its metrics here; /metrics in any worker adds them up.
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="app-metrics-"
        )
    try:
        exit_code = supervise(config, settings.workers, metrics_dir, settings.drain_seconds)
    finally:
        if created:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
