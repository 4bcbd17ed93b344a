"""`python -m app`: check the settings, then serve `app.asgi:app` with hypercorn.

Server settings live here, in one place, taken from the same Settings class as the app.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

from hypercorn.config import Config
from hypercorn.run import run

from app.logs import configure_logging
from app.settings import Settings, settings_or_exit

log = logging.getLogger("app.serve")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.application_path = "app.asgi:app"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    # 0 serves in this process; hypercorn would start one child for workers=1.
    config.workers = 0 if settings.workers == 1 else settings.workers
    # uvloop: hypercorn's asyncio worker had a p99 of up to 2 s under load here.
    config.worker_class = "uvloop"
    config.graceful_timeout = settings.shutdown_grace
    config.backlog = 2048
    # Our own request log (app.observability) carries the request id; hypercorn's would
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
    settings, _ = settings_or_exit()
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics here; /metrics in any worker adds them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="app-metrics-")
    configure_logging(settings.log_level)
    base = f"http://{settings.host}:{settings.port}"
    # For the person at the terminal; the JSON logs go to stderr.
    print(f"serving {base}/  docs: {base}/docs  (Ctrl-C stops)", flush=True)
    log.info("serving", extra={"docs": f"{base}/docs", "workers": settings.workers})
    sys.exit(run(hypercorn_config(settings)))


if __name__ == "__main__":
    main()
