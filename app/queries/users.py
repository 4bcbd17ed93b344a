"""Statements on the `users` table. Parameters are always bound, never formatted in."""

from __future__ import annotations

from typing import Any

import asyncmy
from asyncmy.cursors import DictCursor


async def select_users(
    connection: asyncmy.Connection, *, after: int = 0, limit: int
) -> list[dict[str, Any]]:
    async with connection.cursor(DictCursor) as cursor:
        await cursor.execute(
            "SELECT id, name, email, created_at, updated_at FROM users"
            " WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",
            {"after": after, "limit": limit},
        )
        rows: list[dict[str, Any]] = await cursor.fetchall()
        return rows
