"""The shapes the API accepts and answers with, shared by the routes and the OpenAPI document."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)


if sys.version_info >= (3, 12):
    from typing import TypedDict
else:  # pydantic refuses typing.TypedDict before 3.12; quart-schema needs typing's after
    from typing_extensions import TypedDict

from app.data.upstream import FailureCode, Post
from app.data.users import User

MAX_BATCH_IDS = 100

# The status a single-resource route answers for each upstream failure.
UPSTREAM_STATUS: dict[FailureCode, int] = {
    "not_found": 404,
    "timeout": 504,
    "unreachable": 502,
    "upstream_error": 502,
    "bad_response": 502,
}


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Email = Annotated[EmailStr, StringConstraints(max_length=254)]


# --- problems -------------------------------------------------------------------------


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "email"]])
    msg: str = Field(examples=["value is not a valid email address"])


class ValidationProblem(Problem):
    """A request that is not of the documented shape: each bad field in `errors`."""

    errors: list[FieldError]


class UpstreamFailure(BaseModel):
    url: str
    code: FailureCode = Field(examples=["timeout"])
    detail: str


class UpstreamProblem(Problem):
    """Upstream calls failed: each failed URL in `errors`."""

    errors: list[UpstreamFailure]


# --- posts ----------------------------------------------------------------------------


class PostHeaders(BaseModel):
    etag: str = Field(alias="ETag", description="strong; send it in If-None-Match for a 304")
    cache_control: str = Field(
        alias="Cache-Control",
        description="max-age: what is left of the upstream's freshness; else no-cache",
    )
    age: str | None = Field(default=None, alias="Age", description="seconds, when cached")
    cache_status: str | None = Field(
        default=None,
        alias="Cache-Status",
        description="RFC 9211: hit, fwd=miss, fwd=stale (revalidated), or served stale"
        ' with detail="stale-if-error"',
    )


class PostError(BaseModel):
    code: FailureCode
    status: int = Field(description="what GET /api/v1/posts/{id} answers for the same failure")
    detail: str


class PostFetched(BaseModel):
    id: int
    ok: Literal[True] = True
    post: Post
    stale: bool = Field(
        default=False,
        description="served from the cache past its freshness because the upstream failed"
        " (UPSTREAM_STALE_IF_ERROR)",
    )


class PostFailed(BaseModel):
    id: int
    ok: Literal[False] = False
    error: PostError


class PostBatch(BaseModel):
    """One item per id asked for, in that order; a failed id never fails the others."""

    items: list[Annotated[PostFetched | PostFailed, Field(discriminator="ok")]]
    elapsed_ms: float = Field(description="time spent fetching, in milliseconds")


class PostsQuery(BaseModel):
    ids: str = Field(
        description=f"1 to {MAX_BATCH_IDS} positive integer ids, comma-separated",
        examples=["1,2,3"],
    )

    @field_validator("ids")
    @classmethod
    def _ids(cls, value: str) -> str:
        parse_ids(value)
        return value

    @property
    def id_list(self) -> list[int]:
        return parse_ids(self.ids)


def parse_ids(value: str) -> list[int]:
    parts = [part.strip() for part in value.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError("ids must be positive integers, comma-separated")
    ids = [int(part) for part in parts]
    if not 1 <= len(ids) <= MAX_BATCH_IDS:
        raise ValueError(f"give 1 to {MAX_BATCH_IDS} ids")
    if any(post_id < 1 for post_id in ids):
        raise ValueError("ids must be positive")
    return ids


# --- users ----------------------------------------------------------------------------


class UserHeaders(BaseModel):
    etag: str = Field(
        alias="ETag",
        description="strong; changes with every write. If-None-Match for a 304,"
        " If-Match on PATCH or DELETE to change only this version",
    )


class UserPage(TypedDict):
    items: list[User]
    next_after: Annotated[
        int | None,
        Field(description="pass as `after` for the next page; null when this is the last"),
    ]


class UsersQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)
    after: int = Field(default=0, ge=0, description="answer users with ids greater than this")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(examples=["Ada Lovelace"], description="trimmed; 1 to 100 characters")
    email: Email = Field(examples=["ada@example.com"], description="unique, whatever its case")


class UserPatch(BaseModel):
    """Any of `name` and `email`; at least one."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(default=None, description="trimmed; 1 to 100 characters")
    email: Email | None = Field(default=None, description="unique, whatever its case")

    @field_validator("name", "email", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null; leave the field out to keep it")
        return value

    @model_validator(mode="after")
    def _something(self) -> UserPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, email")
        return self


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
