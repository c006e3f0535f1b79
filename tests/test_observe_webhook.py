"""The attack webhook: Slack-compatible JSON on start and end only, a timeout, and the URL never logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guard.observe.webhook import AttackNotifier


async def test_start_and_end_are_posted_once_each() -> None:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/services/T000/B000/SECRETPART", hook)
    async with TestServer(app) as server:
        n = AttackNotifier(str(server.make_url("/services/T000/B000/SECRETPART")), timeout=2, min_interval=0)
        for _ in range(5):
            n.attack(True, 40, 12.5, 0.4)           # the engine reports on every spiking login
        n.attack(False, 0, 0, 0)
        await n.close()
    assert len(got) == 2
    assert "attack in progress" in got[0]["text"] and "12.5" in got[0]["text"]
    assert "attack over" in got[1]["text"]
    assert got[0]["attachments"][0]["color"]


async def test_failure_is_logged_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks/SECRETPART", slow)
    fails: list[int] = []
    async with TestServer(app) as server:
        n = AttackNotifier(str(server.make_url("/hooks/SECRETPART")), timeout=0.2, min_interval=0,
                           on_fail=fails.append)
        with caplog.at_level(logging.WARNING, logger="guard.observe.webhook"):
            n.attack(True, 1, 1, 1)
            await n.close()
    assert fails == [1]
    assert "attack webhook" in caplog.text and "SECRETPART" not in caplog.text
