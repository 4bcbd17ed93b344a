"""Every setting of the service, read from the environment and `.env`, in one class.

A bad value refuses to build `Settings`; `app.__main__` turns that into one line naming
the variable, so the service never starts half-configured.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import limits
from pydantic import (
    ByteSize,
    Field,
    HttpUrl,
    IPvAnyNetwork,
    MySQLDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # None only before `make run`/the tests have started the private MariaDB; the app
    # refuses to start without a database URL (see `app.__main__`).
    database_url: MySQLDsn | None = Field(default=None, repr=False)  # holds the password
    db_pool_min: int = Field(default=1, ge=0, le=1000)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    db_query_timeout: float = Field(default=5.0, gt=0, le=3600)
    db_pool_timeout: float = Field(default=2.0, gt=0, le=3600)
    # false: migrations are a deploy step (`python -m app.migrate`), never run at start
    migrate_on_start: bool = True

    upstream_base_url: HttpUrl = HttpUrl("https://jsonplaceholder.typicode.com")
    # Empty means "posts 1 and 2 of upstream_base_url", resolved below.
    upstream_urls: Annotated[list[HttpUrl], NoDecode] = Field(default_factory=list)
    upstream_timeout: float = Field(default=5.0, gt=0, le=300)
    upstream_max_concurrency: int = Field(default=50, ge=1, le=10_000)
    upstream_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)
    # off, memory (per process) or redis://[:password@]host:port/db (shared): app.data.http_cache
    upstream_cache: str = Field(default="memory", pattern=r"^(off|memory|redis://\S+)$", repr=False)
    # bytes, or with a unit: 8MiB, 64MB
    upstream_cache_max_bytes: ByteSize = Field(default=ByteSize(64 * 1024**2), ge=64 * 1024)
    # seconds past expiry a stored answer may stand in for a failed call; 0: never
    upstream_stale_if_error: float = Field(default=0.0, ge=0, le=7 * 24 * 3600)
    upstream_coalesce: bool = True
    # seconds past expiry a stored answer is served at once while one background call
    # revalidates it, beyond what the upstream's own stale-while-revalidate allows
    upstream_stale_while_revalidate: float = Field(default=0.0, ge=0, le=7 * 24 * 3600)
    # ms without an answer before one identical call is sent; auto: the host's recent p95
    upstream_hedge_after: Literal["auto", "off"] | Annotated[float, Field(gt=0, le=300_000)] = (
        "auto"
    )
    upstream_retries: int = Field(default=1, ge=0, le=5)
    # FAILURES/WINDOWs that open a host's breaker, e.g. 5/10s; off
    upstream_breaker: str = Field(default="5/10s", pattern=r"^(off|[1-9]\d{0,3}/\d+(\.\d+)?s)$")

    api_token: SecretStr | None = None

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_body_bytes: int = Field(default=65536, ge=1)
    shutdown_grace: float = Field(default=10.0, ge=0, le=3600)
    # cleartext HTTP/2 (prior knowledge, Upgrade: h2c); off: hypercorn cannot bound what
    # resetting streams makes it hold (app.workers)
    http2: bool = False
    # seconds /readyz answers 503 after SIGTERM, while all else is served, before stopping
    drain_seconds: float = Field(default=0.0, ge=0, le=3600)
    write_rate_limit: str = "600/minute"
    # memory:// (per process) or redis://[:password@]host:port/db (shared); app.web.rate_limit
    rate_limit_storage_url: str = Field(
        default="memory://", pattern=r"^(memory://|redis://\S+)$", repr=False
    )
    # Addresses or CIDR ranges of the proxies in front (app.web.proxies); empty: none.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Not in the spec's table: how long the event loop may be blocked before a warning.
    loop_block_threshold: float = Field(default=0.1, gt=0, le=60)

    @field_validator("upstream_urls", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("write_rate_limit")
    @classmethod
    def _rate_limit_form(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError("expected COUNT/UNIT, UNIT one of second, minute, hour, day") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_named(cls, value: MySQLDsn | None) -> MySQLDsn | None:
        if value is not None and not (value.path or "").strip("/"):
            raise ValueError("the URL must name a database: mysql://user:password@host/NAME")
        return value

    @field_validator("upstream_hedge_after", "upstream_breaker", mode="before")
    @classmethod
    def _lower_case_word(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("upstream_breaker")
    @classmethod
    def _window_positive(cls, value: str) -> str:
        if value != "off" and float(value.split("/")[1][:-1]) <= 0:
            raise ValueError("the window must be longer than 0 seconds")
        return value

    @property
    def hedge_after_seconds(self) -> float | Literal["auto"] | None:
        """UPSTREAM_HEDGE_AFTER as app.data.upstream_calls takes it."""
        if self.upstream_hedge_after == "off":
            return None
        if self.upstream_hedge_after == "auto":
            return "auto"
        return self.upstream_hedge_after / 1000

    @property
    def breaker_rule(self) -> tuple[int, float] | None:
        """UPSTREAM_BREAKER as (failures, window in seconds); None when off."""
        if self.upstream_breaker == "off":
            return None
        failures, window = self.upstream_breaker.split("/")
        return int(failures), float(window[:-1])

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not be larger than DB_POOL_MAX")
        if not self.upstream_urls:
            base = str(self.upstream_base_url).rstrip("/")
            # frozen model: set through object.__setattr__ once, during validation
            object.__setattr__(
                self, "upstream_urls", [HttpUrl(f"{base}/posts/1"), HttpUrl(f"{base}/posts/2")]
            )
        return self


def describe_error(error: ValidationError) -> str:
    """One line naming each bad variable, without echoing its value (it may be a secret)."""
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "configuration"
        problems.append(f"{name}: {item['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def settings_or_exit() -> tuple[Settings, MySQLDsn]:
    """The settings and database URL for a command-line entry point, or exit with one line."""
    try:
        settings = Settings()
    except ValidationError as error:
        sys.exit(describe_error(error))
    if settings.database_url is None:
        sys.exit("invalid configuration: DATABASE_URL is not set (`make run` sets it)")
    return settings, settings.database_url
