"""`/api/v1/users`: list, read, create, update, delete. Writes need the bearer token.

Every answer is the rows as app.data.users returns them, serialised straight to JSON.
"""

from __future__ import annotations

from pydantic import TypeAdapter
from quart import Blueprint, Response, url_for
from quart_schema import document_response, tag_blueprint, validate_querystring
from werkzeug.http import quote_etag

from app import deps
from app.data.users import (
    User,
    UserRow,
    delete_user,
    etag_of,
    insert_user,
    select_user,
    select_users,
    update_user,
    versions_in,
)
from app.models import CreatedHeaders, UserCreate, UserHeaders, UserPage, UserPatch, UsersQuery
from app.web.conditional import (
    conditional,
    empty_response,
    honours_if_match,
    honours_if_none_match,
    precondition,
)
from app.web.errors import ApiError
from app.web.openapi import no_body, problems
from app.web.serialization import json_response
from app.web.writes import json_write, token_required

blueprint = Blueprint("users", __name__, url_prefix="/api/v1")
tag_blueprint(blueprint, ["users"])

user_json = TypeAdapter(User)
page_json = TypeAdapter(UserPage)


def _not_found(user_id: int) -> ApiError:
    return ApiError(404, f"There is no user {user_id}.")


def _user(
    row: UserRow | None, user_id: int, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if row is None:
        raise _not_found(user_id)
    response = json_response(user_json, row, status, headers)
    response.set_etag(etag_of(row))
    return response


def _versions_asked(user_id: int) -> tuple[int, ...] | None:
    """The versions the request's If-Match allows a write to change; None: any."""
    tags = precondition()
    return None if tags is None else versions_in(tags, user_id)


def _changed_since(row: UserRow | None, user_id: int) -> ApiError:
    """Why a write with If-Match changed nothing: no such user, or not that version."""
    if row is None:
        return _not_found(user_id)
    return ApiError(
        412,
        f"User {user_id} has changed since the version your If-Match names;"
        " nothing was changed. GET it again for the current ETag.",
        headers={"ETag": quote_etag(etag_of(row))},
    )


@blueprint.get("/users")
@validate_querystring(UsersQuery)
@document_response(UserPage, 200)
@problems(422, 503)
async def list_users(query_args: UsersQuery) -> Response:
    """List users in id order, a page at a time.

    Pass the answer's `next_after` as `after` to get the next page; it is null on the
    last page.
    """
    async with deps.database().connection() as connection:
        # one more than asked: whether it comes back says if more may follow
        rows = await select_users(connection, after=query_args.after, limit=query_args.limit + 1)
    more = len(rows) > query_args.limit
    del rows[query_args.limit :]
    page: UserPage = {"items": rows, "next_after": rows[-1]["id"] if more else None}
    return json_response(page_json, page)


@blueprint.get("/users/<int:user_id>")
@document_response(User, 200, UserHeaders)
@honours_if_none_match(UserHeaders)
@problems(404, 503)
async def get_user(user_id: int) -> Response:
    """Get one user.

    The answer carries a strong ETag: send it in If-None-Match for a 304, or in If-Match
    to change or delete only that version.
    """
    async with deps.database().connection() as connection:
        row = await select_user(connection, user_id=user_id)
    return conditional(_user(row, user_id))


@blueprint.post("/users")
@json_write(UserCreate)
@document_response(User, 201, CreatedHeaders)
@problems(409, 503)
async def create_user(data: UserCreate) -> Response:
    """Create a user.

    Needs the bearer token. The answer's Location is the new user's address, and its
    ETag the first version's tag. An email another user has, whatever its case, is a 409.
    """
    async with deps.database().connection() as connection:
        user_id = await insert_user(connection, name=data.name, email=data.email)
        row = await select_user(connection, user_id=user_id)
    location = url_for("users.get_user", user_id=user_id)
    return _user(row, user_id, 201, {"Location": location})


@blueprint.patch("/users/<int:user_id>")
@json_write(UserPatch)
@document_response(User, 200, UserHeaders)
@honours_if_match
@problems(404, 409, 503)
async def patch_user(user_id: int, data: UserPatch) -> Response:
    """Change a user's name, email, or both.

    Needs the bearer token. Give at least one field; a field left out keeps its value.
    With If-Match, the change is made only while the user is still the version that tag
    names; otherwise the answer is 412 and nothing changes.
    """
    versions = _versions_asked(user_id)
    async with deps.database().connection() as connection:
        changed = await update_user(
            connection, user_id=user_id, name=data.name, email=data.email, versions=versions
        )
        row = await select_user(connection, user_id=user_id)
    if not changed:
        raise _changed_since(row, user_id)
    return _user(row, user_id)


@blueprint.delete("/users/<int:user_id>")
@token_required
@no_body(204)
@honours_if_match
@problems(404, 503)
async def remove_user(user_id: int) -> Response:
    """Delete a user.

    Needs the bearer token. With If-Match, the user is deleted only while it is still the
    version that tag names; otherwise the answer is 412 and nothing changes.
    """
    versions = _versions_asked(user_id)
    async with deps.database().connection() as connection:
        deleted = await delete_user(connection, user_id=user_id, versions=versions)
        if not deleted:
            raise _changed_since(await select_user(connection, user_id=user_id), user_id)
    return empty_response(204)
