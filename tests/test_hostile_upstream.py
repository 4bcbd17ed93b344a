"""An upstream that sends huge or endless bodies, or sets cookies, against a real service.

Counted, not timed: the server's peak memory (VmHWM) and the calls the stub saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Service, running_service

pytestmark = pytest.mark.e2e

# /hostile/posts/{id} on the stub: 1 and 2 send 200 MB (2 declares it), 3 never ends,
# 4 sends 20 MB, any other id is a normal post that sets a cookie.
HUGE = [1, 2, 3, 4]
PEAK_LIMIT_MB = 150


@pytest.fixture(scope="module")
def hostile(
    stub: str, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    upstream = f"{stub}/hostile"
    with running_service(
        tmp_path_factory.mktemp("hostile"),
        DATABASE_URL=migrated,
        UPSTREAM_BASE_URL=upstream,
        UPSTREAM_URLS=f"{upstream}/posts/1,{upstream}/posts/2",
    ) as service:
        yield service


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def test_huge_and_endless_bodies_are_abandoned_at_the_limit(hostile: Service) -> None:
    async with httpx.AsyncClient(base_url=hostile.base, timeout=30) as client:
        singles = await asyncio.gather(*(client.get(f"/api/v1/posts/{n}") for n in HUGE))
        original = await client.get("/")
        # 8 batches at once: 32 huge answers streaming in at the same time
        batches = await asyncio.gather(
            *(client.get("/api/v1/posts", params={"ids": "1,2,3,4"}) for _ in range(8))
        )

    assert [(r.status_code, r.json()["code"]) for r in singles] == [(502, "bad_response")] * 4
    assert original.status_code == 502
    assert [e["code"] for e in original.json()["errors"]] == ["bad_response"] * 2
    for batch in batches:
        assert batch.status_code == 200
        assert [item["error"]["code"] for item in batch.json()["items"]] == ["bad_response"] * 4
    assert "larger than 1048576 bytes" in singles[0].json()["detail"]
    # 1 MiB a call at most, on top of what the process holds anyway (about 80 MB)
    assert peak_rss_mb(hostile.process.pid) < PEAK_LIMIT_MB


async def test_cookies_an_upstream_sets_are_never_sent_on_later_calls(
    hostile: Service, stub: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(f"{stub}/_reset")
        answers = [await client.get(f"{hostile.base}/api/v1/posts/{n}") for n in range(5, 10)]
        stats = (await client.get(f"{stub}/_stats")).json()

    assert [answer.status_code for answer in answers] == [200] * 5
    assert "set-cookie" not in answers[0].headers
    assert stats["calls"] == 5
    assert stats["with_cookie"] == 0
