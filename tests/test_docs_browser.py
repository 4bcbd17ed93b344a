"""/docs in a real browser: Debian's Chromium, headless, against the running service."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tests.support.processes import Service

pytestmark = pytest.mark.e2e

# Chromium's own background traffic (updates, sync, field trials) is not the page's.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed: apt-get install chromium (make test does)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def test_docs_render_every_operation_with_nothing_from_outside(
    browser: Browser, service: Service
) -> None:
    async with httpx.AsyncClient() as client:
        spec = (await client.get(f"{service.base}/openapi.json")).json()
    operations = sum(len(item) for item in spec["paths"].values())
    requested: list[str] = []
    failed: list[str] = []

    page = await browser.new_page()
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    await page.goto(f"{service.base}/docs")
    await page.wait_for_selector(".opblock", timeout=20_000)
    rendered = await page.locator(".opblock").count()
    paths = await page.locator(".opblock-summary-path").all_inner_texts()
    await page.close()

    assert rendered == operations
    assert "/api/v1/users/{user_id}" in {path.replace("\u200b", "") for path in paths}
    assert failed == []
    outside = [url for url in requested if not url.startswith(service.base + "/")]
    assert outside == []
    assert f"{service.base}/openapi.json" in requested
