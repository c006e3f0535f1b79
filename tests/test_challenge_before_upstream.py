"""``before_upstream`` through the real guard: the upstream sees a challenged login only after its code, once.

A real upstream records every request it receives (``tests.proxy_fixtures``),
a real SMTP server receives the codes, and a cookie-keeping client plays the
browser.  The login request is held sealed in the store; wrong codes, forged
forms and replays forward nothing; the right code forwards it once, body
intact, and the upstream's answer (its redirect and session cookie) comes
back to the browser.  The code proves the second factor only: a trusted-device
cookie follows only when the upstream also accepts the password.
"""

from __future__ import annotations

import secrets
from typing import Any

from guard.challenge.keys import new_key
from tests.proxy_fixtures import Guard, GuardFactory, Seen, Upstream, make_guard, upstream
from tests.test_challenge_channels import Mailbox
from tests.test_challenge_e2e import RULES, Browser, code_in, form_fields, mailbox

__all__ = ["mailbox", "make_guard", "upstream"]  # fixtures, used here

KEY = new_key()
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CHALLENGE = "/.loginguard/challenge"


async def guard(make_guard: GuardFactory, upstream: Upstream, smtp_port: int, **challenge: Any) -> Guard:
    settings: dict[str, Any] = {
        "keys": [KEY],
        "mode": "before_upstream",
        "dispatch_delay": 0,
        "channels": {
            "email": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "sender": "g@example.com"}
        },
        **challenge,
    }
    return await make_guard(
        upstream.url, rules=RULES, logins=[{"id": "login", "path": "/login"}], challenge=settings
    )


def logins(up: Upstream) -> list[Seen]:
    return [s for s in up.seen if s.raw_path.startswith("/login")]


def login_body(password: str, note: str = "") -> bytes:
    return f"username=alice%40example.com&password={password}&note={note}".encode()


async def test_the_upstream_sees_the_login_only_after_the_right_code_and_once(
    make_guard: GuardFactory, upstream: Upstream, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    g = await guard(make_guard, upstream, port)
    browser, other = Browser(g.url("")), Browser(g.url(""))
    body = login_body("good", secrets.token_urlsafe(120_000))  # ~160 KB: held whole, under max_held_body
    try:
        status, _, page, _ = await browser.post("/login", body, headers=FORM)
        assert status == 200 and "one-time-code" in page
        assert logins(upstream) == []  # the password has not left the guard
        await g.server._challenges.drain()
        assert len(box.messages) == 1 and "trying to sign in" in box.messages[0][1].get_content()
        code = code_in(box)
        fields = form_fields(page)
        bad = f"{(int(code) + 1) % 10**6:06d}"
        refused = [
            (browser, {**fields, "code": bad, "op": "verify"}),  # a wrong code
            (browser, {**fields, "code": "", "op": "verify"}),
            (other, {**fields, "code": code, "op": "verify"}),  # the right code from another browser
            (browser, {**fields, "csrf": "forged", "code": code, "op": "verify"}),
        ]
        for client, data in refused:
            status, _, _, _ = await client.post(CHALLENGE, data)
            assert status in (403, 422), data
        assert logins(upstream) == []

        status, headers, _, cookies = await browser.post(CHALLENGE, {**fields, "code": code, "op": "verify"})
        assert status == 302 and headers["Location"] == "/home"  # the upstream's own answer
        assert "session=s1" in cookies and any(c.startswith("lgd-") for c in cookies)
        (seen,) = logins(upstream)
        assert seen.method == "POST" and seen.body == body  # once, body intact
        assert seen.header("Content-Type") == ["application/x-www-form-urlencoded"]
        assert seen.header("Content-Length") == [str(len(body))]
        assert seen.header("X-Forwarded-For") == ["127.0.0.1"]

        for client in (browser, other):  # a replay forwards nothing
            status, _, _, _ = await client.post(CHALLENGE, {**fields, "code": code, "op": "verify"})
            assert status in (403, 410)
        assert len(logins(upstream)) == 1
    finally:
        await browser.close()
        await other.close()


async def test_a_right_code_for_a_wrong_password_trusts_no_device(
    make_guard: GuardFactory, upstream: Upstream, mailbox: tuple[Mailbox, int]
) -> None:
    """The code came from the owner's mailbox, the password is the upstream's to judge: it says no."""
    box, port = mailbox
    g = await guard(make_guard, upstream, port)
    browser = Browser(g.url(""))
    try:
        _, _, page, _ = await browser.post("/login", login_body("bad"), headers=FORM)
        await g.server._challenges.drain()
        status, _, answer, cookies = await browser.post(
            CHALLENGE, {**form_fields(page), "code": code_in(box), "op": "verify"}
        )
        assert status == 200 and answer == "wrong password"  # the upstream's answer, streamed back
        assert not any(c.startswith("lgd-") for c in cookies)
        assert len(logins(upstream)) == 1
        # So this browser is not a trusted device: the next login is challenged again, not forwarded.
        status, _, page, _ = await browser.post("/login", login_body("good"), headers=FORM)
        assert status == 200 and "one-time-code" in page and len(logins(upstream)) == 1
    finally:
        await browser.close()


async def test_a_login_too_large_to_hold_is_refused_not_forwarded(
    make_guard: GuardFactory, upstream: Upstream, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    g = await guard(make_guard, upstream, port, max_held_body="4 KiB")
    browser = Browser(g.url(""))
    try:
        status, _, _, _ = await browser.post("/login", login_body("good", "x" * 8192), headers=FORM)
        assert status == 413
        await g.server._challenges.drain()
        assert logins(upstream) == [] and box.messages == []
    finally:
        await browser.close()
