"""Settings refuse bad values with a line naming the variable, and never echo secrets."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import Settings, describe_error


def settings_from(monkeypatch: pytest.MonkeyPatch, **environ: str) -> Settings:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def refusal(monkeypatch: pytest.MonkeyPatch, **environ: str) -> str:
    with pytest.raises(ValidationError) as caught:
        settings_from(monkeypatch, **environ)
    return describe_error(caught.value)


def test_defaults_follow_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "UPSTREAM_BASE_URL",
        "UPSTREAM_URLS",
        "API_TOKEN",
        "PORT",
        "WORKERS",
    ):
        monkeypatch.delenv(name, raising=False)

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert (settings.db_pool_min, settings.db_pool_max) == (1, 10)
    assert [str(url) for url in settings.upstream_urls] == [
        "https://jsonplaceholder.typicode.com/posts/1",
        "https://jsonplaceholder.typicode.com/posts/2",
    ]
    assert (settings.upstream_timeout, settings.upstream_max_concurrency) == (5.0, 50)
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert (settings.max_body_bytes, settings.shutdown_grace) == (65536, 10.0)
    assert settings.write_rate_limit == "600/minute"
    assert settings.api_token is None
    assert settings.cors_origins == []


def test_upstream_urls_follow_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSTREAM_URLS", raising=False)
    settings = settings_from(monkeypatch, UPSTREAM_BASE_URL="http://127.0.0.1:9000/")

    assert [str(url) for url in settings.upstream_urls] == [
        "http://127.0.0.1:9000/posts/1",
        "http://127.0.0.1:9000/posts/2",
    ]


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        UPSTREAM_URLS="http://a.test/1, http://b.test/2 ,http://c.test/3",
        CORS_ORIGINS="https://one.test,https://two.test",
    )

    assert [str(url) for url in settings.upstream_urls] == [
        "http://a.test/1",
        "http://b.test/2",
        "http://c.test/3",
    ]
    assert settings.cors_origins == ["https://one.test", "https://two.test"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("WORKERS", "0"),
        ("DB_POOL_MAX", "lots"),
        ("UPSTREAM_TIMEOUT", "-1"),
        ("UPSTREAM_MAX_CONCURRENCY", "0"),
        ("UPSTREAM_BASE_URL", "not a url"),
        ("UPSTREAM_URLS", "http://ok.test/1,ftp//broken"),
        ("DATABASE_URL", "postgres://u:p@h/db"),
        ("DATABASE_URL", "mysql://u:p@h:3306/"),
        ("MAX_BODY_BYTES", "0"),
        ("WRITE_RATE_LIMIT", "many"),
        ("LOG_LEVEL", "chatty"),
        ("UPSTREAM_HEDGE_AFTER", "soon"),
        ("UPSTREAM_HEDGE_AFTER", "0"),
        ("UPSTREAM_RETRIES", "-1"),
        ("UPSTREAM_BREAKER", "5"),
        ("UPSTREAM_BREAKER", "5/0s"),
        ("UPSTREAM_BREAKER", "0/10s"),
        ("UPSTREAM_STALE_WHILE_REVALIDATE", "-5"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    line = refusal(monkeypatch, **{name: value})

    assert line.startswith("invalid configuration: ")
    assert name in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("hedge_after", "breaker", "expected"),
    [
        ("auto", "5/10s", ("auto", (5, 10.0))),
        ("150", "3/2.5s", (0.15, (3, 2.5))),
        ("OFF", "off", (None, None)),
    ],
)
def test_hedging_and_the_breaker_read_as_written(
    monkeypatch: pytest.MonkeyPatch, hedge_after: str, breaker: str, expected: tuple[Any, Any]
) -> None:
    settings = settings_from(
        monkeypatch, UPSTREAM_HEDGE_AFTER=hedge_after, UPSTREAM_BREAKER=breaker
    )

    assert (settings.hedge_after_seconds, settings.breaker_rule) == expected


def test_pool_bounds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    line = refusal(monkeypatch, DB_POOL_MIN="5", DB_POOL_MAX="2")

    assert "DB_POOL_MIN" in line


def test_a_refusal_never_echoes_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    line = refusal(monkeypatch, DATABASE_URL="mysql://app:hunter2-secret@:badport/x")

    assert "DATABASE_URL" in line
    assert "hunter2-secret" not in line


def test_secrets_are_hidden_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        API_TOKEN="token-value-123",
        DATABASE_URL="mysql://app:db-password-456@db:3306/app",
    )

    assert "token-value-123" not in repr(settings)
    assert "db-password-456" not in repr(settings)
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "token-value-123"
