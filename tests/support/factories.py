"""Test data, written with plain SQL so the tests do not depend on the routes they test."""

from __future__ import annotations

import itertools
from typing import Any

import asyncmy

_serial = itertools.count(1)


async def insert_user(
    connection: asyncmy.Connection, *, name: str | None = None, email: str | None = None
) -> int:
    number = next(_serial)
    async with connection.cursor() as cursor:
        await cursor.execute(
            "INSERT INTO users (name, email) VALUES (%s, %s)",
            (name or f"User {number}", email or f"user{number}@example.com"),
        )
        user_id: int = cursor.lastrowid
        return user_id


async def insert_users(connection: asyncmy.Connection, count: int) -> None:
    rows: list[tuple[Any, ...]] = []
    for _ in range(count):
        number = next(_serial)
        rows.append((f"User {number}", f"user{number}@example.com"))
    async with connection.cursor() as cursor:
        await cursor.executemany("INSERT INTO users (name, email) VALUES (%s, %s)", rows)
