"""A real browser logs in through the interstitial and lands on the upstream's page.

Debian's Chromium driven by Playwright: the legacy site's login form, the guard's
second-factor page, a code from a real SMTP server, and the upstream's own
redirect and session cookie released by the guard.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_challenge_e2e import ALICE, code_in, guard_config, legacy, mailbox, started  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no /usr/bin/chromium")


async def test_browser_passes_the_interstitial(tmp_path: Path, legacy: int, mailbox) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    pw_api = pytest.importorskip("playwright.async_api")
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    base = f"http://127.0.0.1:{server.public_port}"
    errors: list[str] = []
    try:
        async with pw_api.async_playwright() as pw:
            browser = await pw.chromium.launch_persistent_context(
                str(tmp_path / "chrome"), executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"],
            )
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{base}/login")
                await page.fill("input[name=username]", ALICE.login)
                await page.fill("input[name=password]", ALICE.password)
                await page.click("button[type=submit]")
                code_input = page.locator("input[name=code]")
                await code_input.wait_for(timeout=10_000)
                assert await code_input.get_attribute("autocomplete") == "one-time-code"
                await server._challenges.drain()
                await code_input.fill(code_in(box))
                await page.locator("form button[type=submit]").first.click()
                await page.get_by_text("Contact form").wait_for(timeout=10_000)
                assert page.url == f"{base}/contact"
                assert "Signed in as" in await page.content()
            finally:
                await browser.close()
    finally:
        await server.stop(1)
    assert not errors
