"""``guard audit``: which PII a page carries, where, and how much; never the values themselves."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from guard.cli import main
from guard.demo.legacyapp import make_accounts, make_app
from guard.pii.audit import Finding, PageAudit, audit_html, exit_code, masked, render_json, render_table
from tests.redisserver import free_port

ACCOUNTS = make_accounts(3)
BOB = ACCOUNTS["user1@example.jp"]

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="author" content="webmaster@example.com"></head><body>
<p>Questions? Call 03-1234-5678.</p>
<!-- old form: <input type="hidden" name="tel" value="090-1111-2222"> -->
<script>var uid = "U0123456789abcdef0123456789abcdef";</script>
<form>
<input type="hidden" name="phone" value="+81 90-1234-5678">
<input type="hidden" name="csrf" value="20210123-0830">
<INPUT NAME=contact VALUE=hanako@example.jp>
<div data-owner="U0123456789abcdef0123456789abcdef"></div>
<a href="mailto:support@example.com">mail us</a>
<textarea name="m">taro@example.jp</textarea>
</form></body></html>"""
VALUES = ("03-1234-5678", "090-1111-2222", "U0123456789abcdef0123456789abcdef", "+81 90-1234-5678",
          "hanako@example.jp", "support@example.com", "taro@example.jp", "webmaster@example.com")


def rows(findings: list[Finding]) -> list[tuple[str, str, str, int]]:
    return [(f.where, f.field, f.kind, f.count) for f in findings]


def test_every_place_a_page_can_carry_pii() -> None:
    assert rows(audit_html(PAGE.encode(), "utf-8")) == [
        ("hidden", "phone", "phone", 1),
        ("inputs", "contact", "email", 1),
        ("data", "data-owner", "user_id", 1),
        ("attr", "a[href]", "email", 1),
        ("attr", "meta[content]", "email", 1),
        ("text", "", "email", 1),        # the textarea
        ("text", "", "phone", 2),        # the visible number, the commented-out field
        ("text", "", "user_id", 1),      # the script
    ]


def test_reports_never_carry_values() -> None:
    page = PageAudit("http://x/contact", 200, findings=audit_html(PAGE.encode(), "utf-8", show_masked=False))
    for text in (render_table([page]), render_json([page])):
        assert not any(v in text for v in VALUES), text
    shown = PageAudit("http://x/contact", 200, findings=audit_html(PAGE.encode(), "utf-8", show_masked=True))
    for text in (render_table([shown], True), render_json([shown], True)):
        assert not any(v in text for v in VALUES), text
        assert "+81 **-****-5678" in text and "h***@example.jp" in text


@pytest.mark.parametrize(("kind", "value", "sample"), [
    ("phone", "+81 90-1234-5678", "+81 **-****-5678"),
    ("phone", "tel: 03-1234-5678 (office)", "**-****-5678"),
    ("phone", "\uff11\uff12\uff13", "****"),   # full-width, and too short to keep digits
    ("email", "Mail: taro.yamada@example.jp!", "t***@example.jp!"),
    ("user_id", "U0123456789abcdef0123456789abcdef", "U" + "*" * 28 + "cdef"),
    ("member_no", "M12345678", "****"),
])
def test_masked_samples(kind: str, value: str, sample: str) -> None:
    assert masked(kind, value) == sample


def test_legacy_charsets_are_read() -> None:
    full_width = "090-1234-5678".translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789-"})
    sjis = f'<meta charset="Shift_JIS"><input type="hidden" name="名前" value="{full_width}">'
    assert rows(audit_html(sjis.encode("cp932"))) == [("hidden", "名前", "phone", 1)]
    # ISO-2022-JP passes through the guard's rewriter untouched; the audit still reads it
    jis = '<meta charset="iso-2022-jp"><p>電話 03-1234-5678</p><input type=hidden name=mail value=a@x.jp>'
    found = rows(audit_html(jis.encode("iso2022_jp")))
    assert found == [("hidden", "mail", "email", 1), ("text", "", "phone", 1)]


def test_json_and_text_bodies_get_the_text_scan() -> None:
    body = json.dumps({"tel": "090-1234-5678", "id": 7}).encode()
    assert rows(audit_html(body, "utf-8", html_page=False)) == [("text", "", "phone", 1)]


def test_exit_codes() -> None:
    assert exit_code([PageAudit("a", 200)]) == 0
    assert exit_code([PageAudit("a", 200, findings=[Finding("hidden", "x", "phone", 1)])]) == 1
    assert exit_code([PageAudit("a", error="refused")]) == 2


# ---- the command, against a running legacy app --------------------------------------------------


@pytest.fixture
def legacy_port() -> Iterator[int]:
    """The legacy app in a thread of its own: ``guard audit`` runs its own event loop."""
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(make_app(ACCOUNTS), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def login(port: int) -> str:
    async def go() -> str:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{port}/login", data={"username": BOB.login, "password": BOB.password},
            allow_redirects=False,
        ) as r:
            return r.cookies["SID"].value

    return asyncio.run(go())


def test_guard_audit_as_a_logged_in_user(legacy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{legacy_port}/contact"
    # without the session the form redirects to the login page: nothing to see
    assert main(["audit", url]) == 0
    assert "no PII found" in capsys.readouterr().out
    sid = login(legacy_port)
    assert main(["audit", url, "--cookie", f"SID={sid}"]) == 1
    out = capsys.readouterr().out
    for field, kind in (("phone", "phone"), ("mid", "user_id"), ("email", "email")):
        assert any(line.split()[2:5] == ["hidden", field, kind] for line in out.splitlines()), out
    assert BOB.phone not in out and BOB.user_id not in out and BOB.login not in out
    assert "3 in hidden fields" in out
    assert main(["audit", url, "--cookie", f"SID={sid}", "--format", "json", "--show-masked"]) == 1
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["status"] == 200 and doc["total"] == 4   # three fields and the greeting
    by_field = {f["field"]: f for f in doc["findings"]}
    assert by_field["phone"]["samples"] == ["***-****-" + BOB.phone[-4:]]
    assert BOB.user_id not in json.dumps(doc) and BOB.phone not in json.dumps(doc)


def test_guard_audit_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "http://127.0.0.1:1/", "--cookie", "novalue"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    port = free_port()
    assert main(["audit", f"http://127.0.0.1:{port}/", "--timeout", "2"]) == 2
    assert "error" in capsys.readouterr().out


@pytest.fixture
def hop_port() -> Iterator[int]:
    """``/hop`` on 127.0.0.1 redirects to ``localhost``; ``/see`` shows PII only to a request with cookies."""

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/see")

    async def see(request: web.Request) -> web.Response:
        leaked = "Cookie" in request.headers
        value = "leaked@example.jp" if leaked else "-"
        return web.Response(text=f'<input type="hidden" name="who" value="{value}">', content_type="text/html")

    app = web.Application()
    app.router.add_get("/hop", hop)
    app.router.add_get("/see", see)
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_session_cookie_never_follows_a_redirect_to_another_host(
    hop_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", f"http://127.0.0.1:{hop_port}/hop", "--cookie", "SID=secret", "--format", "json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["final_url"] == f"http://localhost:{hop_port}/see" and doc["findings"] == []
    # the same host does get it
    assert main(["audit", f"http://127.0.0.1:{hop_port}/see", "--cookie", "SID=secret"]) == 1
    capsys.readouterr()
