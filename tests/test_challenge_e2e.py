"""The challenge action end to end: a legacy app, the guard, a real SMTP server, real Redis.

A browser-shaped client logs in; the guard holds the upstream's answer, mails a
code (only for a right password), and releases the held answer on the right
code, so the client ends up logged in as the upstream intended.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from guard.challenge.keys import new_key
from guard.config import Config, load_config_text
from guard.demo.legacyapp import make_accounts, make_app
from guard.engine import VirtualClock
from guard.http.server import GuardServer
from tests.challenge_fixtures import ALWAYS_2FA, mailbox
from tests.test_challenge_channels import Mailbox

__all__ = ["mailbox"]  # a fixture: a real SMTP relay

ACCOUNTS = make_accounts(5)
ALICE = ACCOUNTS["user1@example.jp"]
KEY = new_key()
RULES = ALWAYS_2FA


@pytest.fixture
async def legacy() -> AsyncIterator[int]:
    runner = web.AppRunner(make_app(ACCOUNTS), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def guard_config(tmp: Path, upstream: int, smtp: int, extra: str = "") -> Config:
    return load_config_text(config_text(tmp, upstream, smtp, extra), env={})


def config_text(tmp: Path, upstream: int, smtp: int, extra: str = "", admin: str = "{listen: '127.0.0.1:0'}") -> str:
    """guard.yaml for these tests; ``extra`` is appended as is (indent 4: channels, 2: challenge, 0: top)."""
    (tmp / "rules.yaml").write_text(RULES)
    return f"""
listen: 127.0.0.1:0
admin: {admin}
upstream: http://127.0.0.1:{upstream}
rules: [{tmp / 'rules.yaml'}]
logins: [{{id: login, path: /login}}]
attack: {{enabled: false}}
state_dir: {tmp / 'state'}
challenge:
  keys: ['{KEY}']
  dispatch_delay: 0s
  channels:
    email: {{host: 127.0.0.1, port: {smtp}, security: none, sender: guard@example.com, timeout: 5s}}
{extra}"""


class Browser:
    """Cookies per client, like a browser; no redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def post(
        self, path: str, data: dict[str, str] | bytes, **kw: Any
    ) -> tuple[int, dict[str, str], str, Any]:
        async with self.session.post(self.base + path, data=data, allow_redirects=False, **kw) as r:
            return r.status, dict(r.headers), await r.text(), r.headers.getall("Set-Cookie", [])

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=False) as r:
            return r.status, await r.text()

    async def close(self) -> None:
        await self.session.close()


def form_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'name="(hold|csrf)" value="([^"]+)"', page))


def code_in(box: Mailbox, n: int = -1) -> str:
    _env, msg = box.messages[n]
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    m = re.search(r"\b(\d{6,10})\b", body.get_content())
    assert m is not None
    return m.group(1)


async def started(config: Config, **kw: Any) -> GuardServer:
    server = GuardServer(config, **kw)
    await server.start()
    return server


async def test_right_password_code_releases_the_upstream_login(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    browser = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        status, headers, page, _ = await browser.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert status == 200 and "one-time-code" in page
        assert "SID" not in str(headers.get("Set-Cookie", ""))  # the upstream's session is held back
        await server._challenges.drain()
        assert len(box.messages) == 1 and box.messages[0][0].rcpt_tos == [ALICE.login]
        fields = form_fields(page)
        status, headers, _, cookies = await browser.post(
            "/.loginguard/challenge", {**fields, "code": code_in(box), "op": "verify"}
        )
        assert status == 302 and headers["Location"] == "/contact"
        assert any(c.startswith("SID=") for c in cookies)
        status, contact = await browser.get("/contact")
        assert status == 200 and "Contact form" in contact  # the upstream's session works
        # the code is single use
        status, _, page, _ = await browser.post(
            "/.loginguard/challenge", {**fields, "code": code_in(box), "op": "verify"}
        )
        assert status != 302
    finally:
        await browser.close()
        await server.stop(1)


async def test_no_validity_oracle(tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]) -> None:
    """Right and wrong passwords get the same page, byte for byte apart from random tokens."""
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    base = f"http://127.0.0.1:{server.public_port}"
    answers = []
    try:
        for password in (ALICE.password, "wrong-password"):
            b = Browser(base)
            status, headers, page, cookies = await b.post(
                "/login", {"username": ALICE.login, "password": password}
            )
            await b.close()
            answers.append((status, sorted(k for k in headers if k not in ("Date",)), scrub(page),
                            [scrub(c) for c in cookies]))
        assert answers[0] == answers[1]
        await server._challenges.drain()
        assert len(box.messages) == 1  # only the right password sent a code
        # a wrong password's hold fails any code like a wrong code
        b = Browser(base)
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": "nope"})
        status, _, answer, _ = await b.post(
            "/.loginguard/challenge", {**form_fields(page), "code": code_in(box), "op": "verify"}
        )
        assert status != 302 and "one-time-code" in answer
        await b.close()
    finally:
        await server.stop(1)


def scrub(text: str) -> str:
    return re.sub(r"[A-Za-z0-9_-]{20,}", "TOKEN", text)


async def test_brute_force_destroys_the_hold_and_flags_the_source(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    _box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    b = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        fields = form_fields(page)
        statuses = []
        for guess in range(5):
            status, _, _, _ = await b.post(
                "/.loginguard/challenge", {**fields, "code": f"{guess:06d}", "op": "verify"}
            )
            statuses.append(status)
        assert 302 not in statuses
        status, _, _answer, _ = await b.post("/.loginguard/challenge", {**fields, "code": "000000", "op": "verify"})
        assert status != 302
        flagged = await server.engine.store.execute(
            [__import__("guard.store.base", fromlist=["Get"]).Get("flag:ip:127.0.0.1")], server.engine.clock.now()
        )
        assert flagged[0] is not None
    finally:
        await b.close()
        await server.stop(1)


async def test_csrf_mismatch_is_refused(tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]) -> None:
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    base = f"http://127.0.0.1:{server.public_port}"
    victim, attacker = Browser(base), Browser(base)
    try:
        _, _, page, _ = await victim.post("/login", {"username": ALICE.login, "password": ALICE.password})
        await server._challenges.drain()
        # another browser (no binding cookie) posting the victim's form and code gets nothing
        status, _, _, _ = await attacker.post(
            "/.loginguard/challenge", {**form_fields(page), "code": code_in(box), "op": "verify"}
        )
        assert status == 403
        status, _, _, _ = await victim.post(
            "/.loginguard/challenge", {**form_fields(page), "csrf": "forged", "code": code_in(box), "op": "verify"}
        )
        assert status == 403
    finally:
        await victim.close()
        await attacker.close()
        await server.stop(1)


async def test_expired_hold(tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]) -> None:
    box, smtp = mailbox
    clock = VirtualClock(1_800_000_000)
    server = await started(guard_config(tmp_path, legacy, smtp), clock=clock)
    b = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        await server._challenges.drain()
        clock.advance(3600)
        status, _, answer, _ = await b.post(
            "/.loginguard/challenge", {**form_fields(page), "code": code_in(box), "op": "verify"}
        )
        assert status != 302 and "one-time-code" not in answer
    finally:
        await b.close()
        await server.stop(1)


async def test_issued_by_one_instance_answered_by_another_and_after_restart(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int], redis_url: str
) -> None:
    box, smtp = mailbox
    extra = f"store: {{backend: redis, url: '{redis_url}'}}\nsecret_key: test-fingerprint-key-0123456789\n"
    a = await started(guard_config(tmp_path, legacy, smtp, extra))
    b = await started(guard_config(tmp_path, legacy, smtp, extra))
    try:
        browser_a = Browser(f"http://127.0.0.1:{a.public_port}")
        _, _, page, _ = await browser_a.post("/login", {"username": ALICE.login, "password": ALICE.password})
        await a._challenges.drain()
        code = code_in(box)
        cookies = browser_a.session.cookie_jar.filter_cookies(URL(browser_a.base))
        await browser_a.close()
        await a.stop(1)  # instance A is gone: the hold lives in Redis
        browser_b = Browser(f"http://127.0.0.1:{b.public_port}")
        browser_b.session.cookie_jar.update_cookies({k: v.value for k, v in cookies.items()})
        status, headers, _, set_cookies = await browser_b.post(
            "/.loginguard/challenge", {**form_fields(page), "code": code, "op": "verify"}
        )
        assert status == 302 and headers["Location"] == "/contact"
        assert any(c.startswith("SID=") for c in set_cookies)
        await browser_b.close()
    finally:
        await b.stop(1)
        await a.stop(1)


async def test_a_trusted_device_skips_the_next_challenge(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp))
    b = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        await server._challenges.drain()
        status, _, _, _ = await b.post("/.loginguard/challenge", {**form_fields(page), "code": code_in(box), "op": "verify"})
        assert status == 302
        status, headers, _, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert status == 302 and headers["Location"] == "/contact"  # no interstitial this time
        other = Browser(f"http://127.0.0.1:{server.public_port}")
        status, _, page, _ = await other.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert status == 200 and "one-time-code" in page  # a new browser is challenged
        await other.close()
    finally:
        await b.close()
        await server.stop(1)
