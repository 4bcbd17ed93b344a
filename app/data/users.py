"""Statements on the `users` table. Parameters are always bound, never formatted in."""

from __future__ import annotations

import asyncmy
from asyncmy.cursors import DictCursor

from app.models import UserRow

# MariaDB's error for a duplicate key: here only users_email_key can raise it.
DUPLICATE_KEY = 1062

# Times leave the database as RFC 3339 UTC text (every connection runs in UTC): pydantic
# then reads them in Rust, where a Python validator per naive datetime cost ~2 us a row.
# '%%' because the statements take parameters.
USER_COLUMNS = (
    "id, name, email,"
    " DATE_FORMAT(created_at, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ') AS created_at,"
    " DATE_FORMAT(updated_at, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ') AS updated_at"
)


class EmailTaken(Exception):
    pass


async def select_users(
    connection: asyncmy.Connection, *, after: int = 0, limit: int
) -> list[UserRow]:
    async with connection.cursor(DictCursor) as cursor:
        await cursor.execute(
            # only the constant USER_COLUMNS is formatted in; values are bound
            f"SELECT {USER_COLUMNS} FROM users WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",  # noqa: S608
            {"after": after, "limit": limit},
        )
        # asyncmy gives a tuple when there is no row, a list otherwise
        return list(await cursor.fetchall())


async def select_user(connection: asyncmy.Connection, *, user_id: int) -> UserRow | None:
    async with connection.cursor(DictCursor) as cursor:
        await cursor.execute(
            f"SELECT {USER_COLUMNS} FROM users WHERE id = %(id)s",  # noqa: S608
            {"id": user_id},
        )
        row: UserRow | None = await cursor.fetchone()
        return row


async def insert_user(connection: asyncmy.Connection, *, name: str, email: str) -> int:
    """The new user's id; EmailTaken when the address is in use, whatever its case."""
    async with connection.cursor() as cursor:
        try:
            await cursor.execute(
                "INSERT INTO users (name, email) VALUES (%(name)s, %(email)s)",
                {"name": name, "email": email},
            )
        except asyncmy.errors.IntegrityError as error:
            if error.args[0] == DUPLICATE_KEY:
                raise EmailTaken(email) from None
            raise
        user_id: int = cursor.lastrowid
        return user_id


async def update_user(
    connection: asyncmy.Connection, *, user_id: int, name: str | None, email: str | None
) -> None:
    """Set the fields given (None keeps the stored value); EmailTaken as for insert_user."""
    async with connection.cursor() as cursor:
        try:
            await cursor.execute(
                "UPDATE users"
                " SET name = COALESCE(%(name)s, name), email = COALESCE(%(email)s, email)"
                " WHERE id = %(id)s",
                {"id": user_id, "name": name, "email": email},
            )
        except asyncmy.errors.IntegrityError as error:
            if error.args[0] == DUPLICATE_KEY:
                raise EmailTaken(email) from None
            raise


async def delete_user(connection: asyncmy.Connection, *, user_id: int) -> bool:
    """True when there was such a user."""
    async with connection.cursor() as cursor:
        await cursor.execute("DELETE FROM users WHERE id = %(id)s", {"id": user_id})
        deleted: bool = cursor.rowcount == 1
        return deleted
