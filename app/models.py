"""The shapes the API answers with, shared by the routes and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    # MariaDB DATETIME is naive; every connection runs in UTC (app.db.INIT_COMMAND).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int = Field(examples=[1])
    name: str = Field(examples=["Ada Lovelace"])
    email: str = Field(examples=["ada@example.com"])
    created_at: UtcDatetime = Field(description="RFC 3339, UTC")
    updated_at: UtcDatetime = Field(description="RFC 3339, UTC")


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str


class UpstreamFailure(BaseModel):
    url: str
    code: str = Field(
        examples=["timeout"],
        description="not_found, timeout, unreachable, upstream_error or bad_response",
    )
    detail: str


class UpstreamProblem(Problem):
    errors: list[UpstreamFailure]


# The blog's `/` answers whatever JSON each upstream gives.
UpstreamBodies = list[Any]
