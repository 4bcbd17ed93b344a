"""The shapes the API accepts and answers with, shared by the routes and the OpenAPI document."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 12):
    from typing import TypedDict
else:  # pydantic refuses typing.TypedDict before 3.12; quart-schema needs typing's after
    from typing_extensions import TypedDict

from app.data.posts import Post
from app.data.upstream import FailureCode
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


# What pydantic's strip_whitespace removes (Unicode's White_Space, as Rust's trim() has it),
# spelled out as a regular-expression class, so that the document's pattern trims exactly
# the characters the server trims. Neither ECMAScript's \s (it adds U+FEFF) nor Python's
# str.isspace() (it adds U+001C to U+001F) is that set.
def _character_class(codes: list[int]) -> str:
    """`codes` as the inside of a regular-expression class, runs as ranges (\\u2000-\\u200a)."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        f"\\u{first:04x}" + (f"-\\u{last:04x}" if last > first else "") for first, last in runs
    )


def _stripped_by_the_server() -> list[int]:
    trim = TypeAdapter(Annotated[str, StringConstraints(strip_whitespace=True)])
    # U+3000 is the highest code point with the White_Space property.
    return [code for code in range(0x3001) if trim.validate_python(chr(code)) == ""]


STRIPPED = _character_class(_stripped_by_the_server())
MAX_NAME = 100
# Trimmed, 1 to MAX_NAME characters: the first and last kept characters are not stripped,
# and at most MAX_NAME - 2 of any kind lie between them.
NAME_PATTERN = (
    f"^[{STRIPPED}]*[^{STRIPPED}](?:[\\s\\S]{{0,{MAX_NAME - 2}}}[^{STRIPPED}])?[{STRIPPED}]*$"
)
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": f"trimmed of surrounding whitespace, then 1 to {MAX_NAME} characters",
        }
    ),
]

MAX_EMAIL = 254
# email-validator refuses addresses at these special-use domains (RFC 6761 and others);
# the document rules them out with the same list (email_validator.SPECIAL_USE_DOMAIN_NAMES).
SPECIAL_USE_DOMAINS = tuple(SPECIAL_USE_DOMAIN_NAMES)
SPECIAL_USE_PATTERN = (
    "[@.](?:"
    # JSON Schema patterns take no flags: each letter in either case
    + "|".join(
        "".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
        for name in SPECIAL_USE_DOMAINS
    )
    + ")$"
)
Email = Annotated[
    EmailStr,
    StringConstraints(max_length=MAX_EMAIL),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "maxLength": MAX_EMAIL,
            "not": {"pattern": SPECIAL_USE_PATTERN},
            "description": "an address at a domain that is not for special use"
            f" ({', '.join(SPECIAL_USE_DOMAINS)}); unique, whatever its case",
        }
    ),
]


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


class RetryAfterHeaders(BaseModel):
    retry_after: int = Field(alias="Retry-After", ge=0, description="seconds to wait first")


class ChallengeHeaders(BaseModel):
    www_authenticate: Literal["Bearer"] = Field(
        alias="WWW-Authenticate", description="the scheme a write needs"
    )


class CurrentTagHeaders(BaseModel):
    etag: str = Field(alias="ETag", description="the current version's strong tag")


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


# Answers: a field with a default is still always written, so the document marks it required.
ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)


class PostFetched(BaseModel):
    model_config = ANSWER

    id: int
    ok: Literal[True]
    post: Post
    stale: bool = Field(
        default=False,
        description="served from the cache past its freshness: the upstream failed"
        " (UPSTREAM_STALE_IF_ERROR), or it is being revalidated in the background"
        " (stale-while-revalidate)",
    )


class PostFailed(BaseModel):
    model_config = ANSWER

    id: int
    ok: Literal[False]
    error: PostError


class PostBatch(BaseModel):
    """One item per id asked for, in that order; a failed id never fails the others."""

    items: list[Annotated[PostFetched | PostFailed, Field(discriminator="ok")]]
    elapsed_ms: float = Field(description="time spent fetching, in milliseconds")


# One id: a positive integer, leading zeros allowed; spaces may surround each.
POST_ID = "0*[1-9][0-9]*"
IDS_PATTERN = f"^ *{POST_ID} *(?:, *{POST_ID} *){{0,{MAX_BATCH_IDS - 1}}}$"


class PostsQuery(BaseModel):
    # The pattern is the whole rule, for the server and the document alike.
    ids: str = Field(
        pattern=IDS_PATTERN,
        description=f"1 to {MAX_BATCH_IDS} positive integer ids, comma-separated",
        examples=["1,2,3"],
    )

    @property
    def id_list(self) -> list[int]:
        return [int(part) for part in self.ids.split(",")]


# --- users ----------------------------------------------------------------------------


class UserHeaders(BaseModel):
    etag: str = Field(
        alias="ETag",
        description="strong; changes with every write. If-None-Match for a 304,"
        " If-Match on PATCH or DELETE to change only this version",
    )


class CreatedHeaders(UserHeaders):
    location: str = Field(alias="Location", description="the new user's address")


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

    name: Name = Field(examples=["Ada Lovelace"])
    email: Email = Field(examples=["ada@example.com"])


def _left_out_not_null(schema: dict[str, Any]) -> None:
    """The field's schema without its null and its default: None only stands for "left
    out", and a null is refused."""
    schema.pop("default", None)
    (value,) = [choice for choice in schema.pop("anyOf") if choice.get("type") != "null"]
    schema.update(value)


class UserPatch(BaseModel):
    """Any of `name` and `email`, at least one; a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: Name | None = Field(default=None, json_schema_extra=_left_out_not_null)
    email: Email | None = Field(default=None, json_schema_extra=_left_out_not_null)

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
    model_config = ANSWER

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ANSWER

    status: Literal["ready"] = "ready"
