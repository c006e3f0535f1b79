"""The dashboard end to end: Debian's Chromium driven by Playwright, against the admin app over a real Engine.

The test causes a block and a ban, opens the page, enters the token, sees both,
clicks "Unban" and checks the store: the ban is gone.  Skipped when Playwright
or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from guard.engine import Engine
from guard.engine.decision import Action
from guard.observe.hub import Observability
from tests.observe_fixtures import TOKEN, admin_app, event, exposure, make_engine, observability

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no /usr/bin/chromium"),
]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = make_engine(tmp_path)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
async def obs(tmp_path: Path, engine: Engine) -> AsyncIterator[Observability]:
    o = observability(tmp_path)
    await o.start(engine)
    yield o
    await o.close()


async def test_block_shows_and_unban_takes_effect(tmp_path: Path, engine: Engine, obs: Observability) -> None:
    pw_api = pytest.importorskip("playwright.async_api")
    await engine.ban("ip:203.0.113.77", 3600, "many-users")
    for _ in range(4):
        obs.fanout.request(event(ip="203.0.113.77", action=Action.BLOCK, rules=("admin-path",), status=403,
                                 path="/admin/users", country="JP", asn=64500))
    obs.fanout.request(event(ip="198.51.100.3", login="login", outcome="success"))
    obs.fanout.exposure(exposure("u1", "JP", True, 1000.0))
    engine._attack_until = engine.clock.now() + 600     # the detector's state: what the hub follows
    engine.observer.attack(True, 40, 12.0, 0.5)         # and what the engine reports when it trips
    errors: list[str] = []
    async with TestServer(admin_app(engine, obs)) as server, pw_api.async_playwright() as pw:
        # a fresh profile per run: launch_persistent_context is Playwright's way to pass --user-data-dir
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chrome"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            await page.goto(str(server.make_url("/dashboard")))
            await page.fill("#token", TOKEN)
            await page.click("#go")
            bans = page.locator("#bans")
            await bans.get_by_text("ip:203.0.113.77").wait_for(timeout=10_000)
            await page.locator("#top-ip").get_by_text("203.0.113.77").wait_for()
            await page.locator("#recent").get_by_text("/admin/users").first.wait_for()
            assert await page.locator("#top-country").get_by_text("Japan (JP)").count() == 1
            assert await page.locator("#rules").get_by_text("admin-path").count() == 1
            assert "ATTACK IN PROGRESS" in await page.locator("#attack").inner_text()
            assert (await page.locator("#k-login").inner_text()).replace(" ", "") == "1/0"
            assert await page.locator("#conn").inner_text() in ("live", "polling")
            await page.locator("#bans button.unban").first.click()
            await bans.get_by_text("ip:203.0.113.77").wait_for(state="detached", timeout=10_000)
            assert await engine.store.bans(engine.clock.now()) == []
            assert engine.bans.lookup("203.0.113.77") is None
            # the token is kept for the tab: a reload opens the dashboard again without the form
            await page.reload()
            await page.locator("#k-req").wait_for(timeout=10_000)
        finally:
            await browser.close()
    assert not [e for e in errors if "401" not in e], errors
