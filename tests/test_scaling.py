"""Two guard processes, one real Redis: limits, bans and challenges hold across instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.test_cli_run import Guard

pytestmark = pytest.mark.slow

RULES = """
rules:
  - id: ten-logins-per-ip
    description: at most 10 login attempts per IP per 10 minutes, wherever they land
    when:
      velocity: {key: ip, metric: attempts, window: 10m, over: 10}
    action: block
"""


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def login(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="form again")

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="home")

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/", home)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_velocity_and_bans_are_shared(tmp_path: Path, upstream: int, redis_url: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    extra = (
        f"store: {{backend: redis, url: '{redis_url}'}}\nsecret_key: test-fingerprint-key-0123456789\n"
        "trusted_proxies: [127.0.0.1/32]\nattack: {enabled: false}\nadmin: {token: t0ken-for-tests}\n"
    )
    guards = []
    for sub in ("a", "b"):
        (tmp_path / sub / "rules.yaml").write_text(RULES)
        guards.append(Guard(tmp_path / sub, upstream, extra=extra.replace("admin: {token: t0ken-for-tests}\n", "")))
    a, b = guards
    try:
        await asyncio.gather(a.ready(), b.ready())
        statuses = []
        async with aiohttp.ClientSession() as s:
            for i in range(12):  # alternate between the instances, one client IP
                g = (a, b)[i % 2]
                async with s.post(g.url("/login"), data={"username": f"u{i}", "password": "x"},
                                  headers={"X-Forwarded-For": "198.51.100.7"}) as r:
                    statuses.append(r.status)
        assert statuses[:10] == [200] * 10, statuses
        assert statuses[10:] == [403, 403], statuses  # the 11th attempt, on either instance

        # a ban made through one instance (its CLI writes to Redis) blocks on the other within a second
        import subprocess
        import sys

        res = subprocess.run(
            [sys.executable, "-m", "guard", "ban", "add", "203.0.113.9", "--for", "1h", "-c", str(a.config)],
            capture_output=True, text=True,
        )
        assert res.returncode == 0, res.stderr
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(b.url("/"), headers={"X-Forwarded-For": "203.0.113.9"}) as r:
                    if r.status == 403:
                        break
                assert time.monotonic() - t0 < 1.5, "the ban did not reach the other instance in time"
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0 + 0.5
        # and lifting it on one lifts it everywhere
        res = subprocess.run(
            [sys.executable, "-m", "guard", "ban", "del", "203.0.113.9", "-c", str(b.config)],
            capture_output=True, text=True,
        )
        assert res.returncode == 0 and "unbanned" in res.stdout
        await asyncio.sleep(1.2)
        async with aiohttp.ClientSession() as s, s.get(a.url("/"), headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            assert r.status == 200
    finally:
        for g in guards:
            g.stop()


async def test_a_challenge_issued_by_one_process_is_answered_through_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    import re

    from aiosmtpd.controller import Controller

    from guard.challenge.keys import new_key
    from guard.demo.legacyapp import make_accounts, make_app
    from tests.redisserver import free_port
    from tests.test_challenge_channels import Mailbox
    from tests.test_challenge_e2e import code_in, form_fields

    accounts = make_accounts(3)
    alice = accounts["user1@example.jp"]
    runner = web.AppRunner(make_app(accounts), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = runner.addresses[0][1]
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    key = new_key()
    extra = (
        f"store: {{backend: redis, url: '{redis_url}'}}\nattack: {{enabled: false}}\n"
        f"secret_key: shared-fingerprint-key-0123456789\n"
        f"challenge:\n  keys: ['{key}']\n  dispatch_delay: 0s\n  channels:\n"
        f"    email: {{host: 127.0.0.1, port: {smtp.port}, security: none, sender: g@example.com}}\n"
    )
    rules = "rules:\n  - {id: twofa, description: always, when: {login: true}, action: challenge}\n"
    guards = []
    try:
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
            (tmp_path / sub / "rules.yaml").write_text(rules)
            guards.append(Guard(tmp_path / sub, upstream, extra=extra))
        a, b = guards
        await asyncio.gather(a.ready(), b.ready())
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            async with s.post(a.url("/login"), data={"username": alice.login, "password": alice.password},
                              allow_redirects=False) as r:
                assert r.status == 200
                page = await r.text()
            for _ in range(50):
                if box.messages:
                    break
                await asyncio.sleep(0.1)
            fields = form_fields(page)
            async with s.post(b.url("/.loginguard/challenge"),
                              data={**fields, "code": code_in(box), "op": "verify"}, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/contact"
                assert any(re.match(r"SID=", c) for c in r.headers.getall("Set-Cookie", []))
    finally:
        for g in guards:
            g.stop()
        smtp.stop()
        await runner.cleanup()
