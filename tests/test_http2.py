"""Cleartext HTTP/2 is off unless HTTP2=true: hypercorn cannot bound what a client that
opens streams and resets them at once makes it hold (rapid reset, CVE-2023-44487)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.processes import Service, running_service

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, stream 0
UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
)


async def first_bytes(service: Service, payload: bytes) -> bytes:
    port = int(service.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    try:
        data = await asyncio.wait_for(reader.read(64), 5)
    except TimeoutError:
        data = b""
    writer.close()
    return data


def http2_settings(data: bytes) -> bool:
    """The server's first HTTP/2 frame: a SETTINGS frame on stream 0."""
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00"


async def test_cleartext_http2_is_off_by_default(service: Service) -> None:
    prior_knowledge = await first_bytes(service, PREFACE + EMPTY_SETTINGS)
    upgrade = await first_bytes(service, UPGRADE)

    assert not http2_settings(prior_knowledge)
    assert upgrade.startswith(b"HTTP/1.1 200")  # answered in HTTP/1.1: the upgrade ignored


async def test_http2_true_serves_cleartext_http2(migrated: str, tmp_path: Path) -> None:
    with running_service(tmp_path, DATABASE_URL=migrated, HTTP2="true") as service:
        prior_knowledge = await first_bytes(service, PREFACE + EMPTY_SETTINGS)
        upgrade = await first_bytes(service, UPGRADE)

    assert http2_settings(prior_knowledge)
    assert upgrade.startswith(b"HTTP/1.1 101")
