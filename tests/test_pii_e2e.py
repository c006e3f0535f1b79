"""The incident's contact form behind the guard, end to end: the PII leaves the page, the form still works.

The bundled legacy app embeds the user's phone number, internal user id and
e-mail address in hidden fields of its contact form, and answers the form with
``identified: true`` only when the original values come back.  A browser-shaped
client logs in through the guard, reads the form, and submits it; another
browser replays the first one's tokens; two guard instances share one Redis.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guard.config import Config, load_config_text
from guard.demo.legacyapp import RECEIVED, make_accounts, make_app
from guard.http.server import GuardServer
from guard.pii.token import TOKEN_RE

ACCOUNTS = make_accounts(4)
ALICE = ACCOUNTS["user2@example.jp"]


class Recorder:
    """Counts what the proxy reports about PII: per kind and mode, and tamper attempts by field name."""

    def __init__(self) -> None:
        self.pii_events: list[tuple[str, str, str, int]] = []
        self.tampers: list[tuple[str, str]] = []

    def pii(self, path: str, kind: str, mode: str, count: int) -> None:
        self.pii_events.append((path, kind, mode, count))

    def tamper(self, path: str, field_name: str) -> None:
        self.tampers.append((path, field_name))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Legacy:
    def __init__(self, app: web.Application, port: int) -> None:
        self.app = app
        self.port = port

    @property
    def received(self) -> list[dict[str, str]]:
        """What the legacy app's contact form received, in order."""
        return self.app[RECEIVED]


@pytest.fixture
async def legacy() -> AsyncIterator[Legacy]:
    app = make_app(ACCOUNTS)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Legacy(app, runner.addresses[0][1])
    await runner.cleanup()


def config(tmp: Path, upstream: int, extra: str = "") -> Config:
    return load_config_text(
        f"""
listen: 127.0.0.1:0
admin: {{listen: '127.0.0.1:0'}}
upstream: http://127.0.0.1:{upstream}
logins: [{{id: login, path: /login}}]
attack: {{enabled: false}}
log: {{requests: false}}
state_dir: {tmp / 'state'}
{extra}""",
        env={},
    )


async def started(cfg: Config) -> tuple[GuardServer, Recorder]:
    server = GuardServer(cfg)
    await server.start()
    rec = Recorder()
    server.engine.observer = rec
    return server, rec


class Browser:
    """Keeps cookies like a browser (the upstream's session, the guard's vault cookie); no redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def login(self, who: Any = ALICE) -> None:
        form = {"username": who.login, "password": who.password}
        async with self.session.post(self.base + "/login", data=form, allow_redirects=False) as r:
            assert r.status == 302, await r.text()

    async def contact(self) -> str:
        async with self.session.get(self.base + "/contact", allow_redirects=False) as r:
            assert r.status == 200
            return await r.text()

    async def submit(self, fields: dict[str, str], base: str | None = None) -> dict[str, Any]:
        url = (base or self.base) + "/contact"
        async with self.session.post(url, data=fields, allow_redirects=False) as r:
            assert r.status == 200, r.status
            result: dict[str, Any] = await r.json()
            return result

    def cookie(self, name: str) -> str | None:
        for c in self.session.cookie_jar:
            if c.key == name:
                return c.value
        return None

    async def close(self) -> None:
        await self.session.close()


def hidden_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


async def test_the_contact_form_keeps_working_without_showing_the_pii(
    tmp_path: Path, legacy: Legacy
) -> None:
    server, rec = await started(config(tmp_path, legacy.port))
    browser = Browser(f"http://127.0.0.1:{server.public_port}")
    try:
        await browser.login()
        page = await browser.contact()
        fields = hidden_fields(page)
        assert set(fields) == {"phone", "mid", "email"}
        assert all(TOKEN_RE.fullmatch(v) for v in fields.values()), fields
        assert ALICE.phone not in page and ALICE.user_id not in page
        # the e-mail is also the login name the page greets the user with, in visible text
        # (not a field, so not the rewriter's); no field carries it any more
        assert f'value="{ALICE.login}"' not in page
        assert browser.cookie("lgpii") is not None
        result = await browser.submit({**fields, "message": "my order is late"})
        assert result == {"received": True, "identified": True}
        received = legacy.received[-1]
        assert received == {"phone": ALICE.phone, "mid": ALICE.user_id, "email": ALICE.login,
                            "message": "my order is late"}
        assert sorted((k, m) for _, k, m, _ in rec.pii_events) == [
            ("email", "tokenize"), ("phone", "tokenize"), ("user_id", "tokenize")]
        assert rec.tampers == []
    finally:
        await browser.close()
        await server.stop(1)


async def test_tokens_replayed_from_another_browser_are_rejected(
    tmp_path: Path, legacy: Legacy
) -> None:
    server, rec = await started(config(tmp_path, legacy.port))
    base = f"http://127.0.0.1:{server.public_port}"
    first, second = Browser(base), Browser(base)
    try:
        await first.login()
        stolen = hidden_fields(await first.contact())
        await second.login()          # the same account, another browser: its own vault cookie
        await second.contact()
        assert second.cookie("lgpii") not in (None, first.cookie("lgpii"))
        result = await second.submit({**stolen, "message": "hi"})
        assert result == {"received": True, "identified": False}
        assert legacy.received[-1] == {"phone": "", "mid": "", "email": "", "message": "hi"}
        assert sorted(name for _, name in rec.tampers) == ["email", "mid", "phone"]
        assert all(path == "/contact" for path, _ in rec.tampers)
        # the rightful browser still gets its form through
        assert (await first.submit({**stolen, "message": "hi"}))["identified"] is True
    finally:
        await first.close()
        await second.close()
        await server.stop(1)


async def test_two_guard_instances_share_the_vault_through_redis(
    tmp_path: Path, legacy: Legacy, redis_url: str
) -> None:
    extra = f"store: {{backend: redis, url: '{redis_url}'}}\nsecret_key: test-fingerprint-key-0123456789"
    a, _ = await started(config(tmp_path / "a", legacy.port, extra))
    b, _ = await started(config(tmp_path / "b", legacy.port, extra))
    browser = Browser(f"http://127.0.0.1:{a.public_port}")
    try:
        await browser.login()
        fields = hidden_fields(await browser.contact())
        assert all(TOKEN_RE.fullmatch(v) for v in fields.values())
        # the load balancer sends the submission to the other instance
        result = await browser.submit({**fields, "message": "x"}, base=f"http://127.0.0.1:{b.public_port}")
        assert result["identified"] is True
    finally:
        await browser.close()
        await a.stop(1)
        await b.stop(1)
