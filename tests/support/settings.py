"""Settings the tests build apps and services with."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

UPSTREAM = "http://upstream.test"
# The bearer token of the in-process apps the API tests use (the `api` fixture).
TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The bearer token of the service the end-to-end tests share.
E2E_TOKEN = "e2e-token"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "upstream_base_url": UPSTREAM,
        "upstream_timeout": 1.0,
        "upstream_max_concurrency": 50,
        "api_token": None,
        "cors_origins": "",
        "log_level": "info",
        # above scheduling noise on a loaded 2-core CI machine; real routes take ms
        "loop_block_threshold": 0.25,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
