"""The `users` table: the row type and every statement on it, parameters always bound.

A `User` is a row exactly as these statements return it, and exactly what the API
answers: the routes serialise rows straight to JSON through a TypeAdapter, which checks
each field's type as it writes (building pydantic models first cost five times as much,
about 110 us more for 50 users). Adding a column: see "Add a column" in docs/development.md.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated

import asyncmy
from asyncmy.cursors import DictCursor
from pydantic import Field

from app.data.database import execute

if sys.version_info >= (3, 12):
    from typing import TypedDict
else:  # pydantic refuses typing.TypedDict before 3.12; quart-schema needs typing's after
    from typing_extensions import TypedDict


RFC3339 = {"format": "date-time"}


class User(TypedDict):
    id: Annotated[int, Field(examples=[1])]
    name: Annotated[str, Field(examples=["Ada Lovelace"])]
    email: Annotated[str, Field(examples=["ada@example.com"])]
    created_at: Annotated[str, Field(description="RFC 3339, UTC", json_schema_extra=RFC3339)]
    updated_at: Annotated[str, Field(description="RFC 3339, UTC", json_schema_extra=RFC3339)]


class UserRow(User):
    """A user with its version, which the API shows only inside the user's ETag."""

    version: int


def etag_of(row: UserRow) -> str:
    """The user's strong entity tag (unquoted): it changes with every write."""
    return f"{row['id']}.{row['version']}"


def versions_in(tags: set[str], user_id: int) -> tuple[int, ...]:
    """The versions of `user_id` that the strong `tags` of an If-Match name."""
    versions = []
    for tag in tags:
        tagged_id, _, version = tag.partition(".")
        if tagged_id == str(user_id) and version.isascii() and version.isdigit():
            versions.append(int(version))
    return tuple(versions)


# Times leave the database as RFC 3339 UTC text (every connection runs in UTC), so no
# Python code touches them per row. '%%' because the statements take parameters.
USER_COLUMNS = (
    "id, name, email,"
    " DATE_FORMAT(created_at, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ') AS created_at,"
    " DATE_FORMAT(updated_at, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ') AS updated_at"
)

# MariaDB's error for a duplicate key: here only users_email_key can raise it.
DUPLICATE_KEY = 1062


class EmailTaken(Exception):
    pass


async def select_users(connection: asyncmy.Connection, *, after: int = 0, limit: int) -> list[User]:
    async with connection.cursor(DictCursor) as cursor:
        await execute(
            cursor,
            # only the constant USER_COLUMNS is formatted in; values are bound
            f"SELECT {USER_COLUMNS} FROM users WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",  # noqa: S608
            {"after": after, "limit": limit},
        )
        # asyncmy gives a tuple when there is no row, a list otherwise
        return list(await cursor.fetchall())


async def select_user(connection: asyncmy.Connection, *, user_id: int) -> UserRow | None:
    async with connection.cursor(DictCursor) as cursor:
        await execute(
            cursor,
            f"SELECT {USER_COLUMNS}, version FROM users WHERE id = %(id)s",  # noqa: S608
            {"id": user_id},
        )
        row: UserRow | None = await cursor.fetchone()
        return row


async def insert_user(connection: asyncmy.Connection, *, name: str, email: str) -> int:
    """The new user's id; EmailTaken when the address is in use, whatever its case."""
    async with connection.cursor() as cursor:
        with _unique_email(email):
            await execute(
                cursor,
                "INSERT INTO users (name, email) VALUES (%(name)s, %(email)s)",
                {"name": name, "email": email},
            )
        user_id: int = cursor.lastrowid
        return user_id


# A write with If-Match names the versions it may change; the check is part of the
# statement, so no other write can come between the check and this one. Keyed by
# whether there are versions to check.
UPDATE_USER = {
    False: "UPDATE users"
    " SET name = COALESCE(%(name)s, name), email = COALESCE(%(email)s, email),"
    " version = version + 1 WHERE id = %(id)s",
    True: "UPDATE users"
    " SET name = COALESCE(%(name)s, name), email = COALESCE(%(email)s, email),"
    " version = version + 1 WHERE id = %(id)s AND version IN %(versions)s",
}
DELETE_USER = {
    False: "DELETE FROM users WHERE id = %(id)s",
    True: "DELETE FROM users WHERE id = %(id)s AND version IN %(versions)s",
}


async def update_user(
    connection: asyncmy.Connection,
    *,
    user_id: int,
    name: str | None,
    email: str | None,
    versions: tuple[int, ...] | None = None,
) -> bool:
    """Set the fields given (None keeps the stored value), if the user's version is one
    of `versions` (None: whatever it is). True when the user was changed; EmailTaken as
    for insert_user."""
    if versions == ():
        return False
    async with connection.cursor() as cursor:
        with _unique_email(email):
            await execute(
                cursor,
                UPDATE_USER[versions is not None],
                {"id": user_id, "name": name, "email": email, "versions": versions},
            )
        changed: bool = cursor.rowcount == 1
        return changed


async def delete_user(
    connection: asyncmy.Connection, *, user_id: int, versions: tuple[int, ...] | None = None
) -> bool:
    """True when the user was deleted: it existed, at one of `versions` if given."""
    if versions == ():
        return False
    async with connection.cursor() as cursor:
        await execute(
            cursor, DELETE_USER[versions is not None], {"id": user_id, "versions": versions}
        )
        deleted: bool = cursor.rowcount == 1
        return deleted


@contextlib.contextmanager
def _unique_email(email: str | None) -> Iterator[None]:
    try:
        yield
    except asyncmy.errors.IntegrityError as error:
        if error.args[0] == DUPLICATE_KEY:
            raise EmailTaken(email) from None
        raise
