"""The authenticator-app offer after a passed challenge (service level, memory and Redis, real SMTP).

What is checked: the offer appears only when configured, only in step-up mode,
only for accounts without an app, and only right after a passed code; it is
bound to the browser (new binding cookie, its own CSRF token) and expires;
confirming with the app's code enrols the account (sealed) and releases the
held answer exactly as a pass without the offer would; skipping releases it
too; either way once.  The page is self-contained, localised and accessible.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from guard.challenge import Answer, Challenges, Mode, Page, Verdict
from guard.challenge.channels.totp import decode_secret, record_key, totp
from guard.challenge.devices import binding_cookie_name
from guard.challenge.enrolpage import EnrolState, EnrolView, grouped, render
from guard.challenge.pages import PAGE_CSP, Pages
from guard.challenge.settings import BrandSettings
from guard.engine.clock import VirtualClock
from guard.store import Get, Store
from tests.test_challenge_channels import Mailbox, Smtp
from tests.test_challenge_e2e import ALICE as LEGACY
from tests.test_challenge_e2e import Browser, code_in, form_fields, guard_config, legacy, mailbox, started
from tests.test_challenge_service import (
    ALICE,
    SUCCESS,
    T0,
    cookies,
    form,
    mailed_code,
    make_settings,
    smtp_server,
    store,
)

__all__ = ["legacy", "mailbox", "smtp_server", "store"]  # fixtures, used here

ENROL = {"totp": {"self_enrol": True, "issuer": "Example"}}


@pytest.fixture
async def svc(store: Store, smtp_server: Smtp, clock: VirtualClock) -> AsyncIterator[Challenges]:
    service = Challenges(make_settings(smtp_server, channels=_channels(smtp_server, ENROL)), store, clock=clock)
    yield service
    await service.aclose()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


def _channels(smtp: Smtp, extra: dict[str, Any]) -> dict[str, Any]:
    email = {"host": "127.0.0.1", "port": smtp.port, "security": "none", "sender": "guard@example.com", "timeout": 5}
    return {"email": email, **extra}


async def passed(svc: Challenges, smtp: Smtp, **kw: Any) -> Answer:
    """A step-up hold for a right password, answered with its mailed code."""
    page = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    return await svc.answer(form(page, mailed_code(smtp)), cookies(page), client_ip=ALICE.client_ip, **kw)


def offer_of(page: Page) -> tuple[dict[str, str], dict[str, str], str]:
    """(the form's hidden fields, the browser's binding cookie, the secret shown as text)."""
    body = page.body.decode()
    fields = dict(re.findall(r'name="(offer|csrf)" value="([^"]+)"', body))
    key = re.search(r'<code class="key">([A-Z2-7 ]+)</code>', body)
    (cookie,) = page.header("Set-Cookie")
    name, value = cookie.split(";")[0].split("=", 1)
    assert key is not None and set(fields) == {"offer", "csrf"} and name == binding_cookie_name(False)
    return fields, {name: value}, key.group(1).replace(" ", "")


async def test_confirming_the_app_enrols_and_releases_the_held_answer(
    svc: Challenges, smtp_server: Smtp, store: Store, clock: VirtualClock
) -> None:
    a = await passed(svc, smtp_server)
    assert a.verdict is Verdict.PASSED and a.released is None and a.page is not None
    assert a.page.status == 200 and a.account_key is None  # not a login yet: nothing for the ledger
    page = a.page
    body = page.body.decode()
    assert "Set up an authenticator app" in body and '<div class="qr" role="img" aria-label=' in body
    assert "<svg" in body and "<script" not in body and "http" not in body.replace("otpauth", "")
    assert b"VALID-SESSION" not in page.body
    headers = dict(page.headers)
    assert headers["Content-Security-Policy"] == PAGE_CSP and headers["Cache-Control"] == "no-store"
    assert page.header("Set-Cookie")[0].endswith("; Max-Age=600; Path=/; HttpOnly; SameSite=Strict")
    fields, jar, secret = offer_of(page)

    wrong = f"{(int(totp(decode_secret(secret), T0)) + 1) % 10**6:06d}"
    w = await svc.answer({**fields, "code": wrong, "op": "enrol"}, jar, client_ip=ALICE.client_ip)
    assert w.verdict is Verdict.ENROL_WRONG and w.page is not None and w.page.status == 422
    assert b"4 more time(s)" in w.page.body and secret in offer_of_body(w.page)
    assert not await svc.enrolments.enrolled(ALICE.account_key, T0)

    clock.advance(31)  # the user took a while: the app shows the next step's code now
    code = totp(decode_secret(secret), clock.now())
    done = await svc.answer({**fields, "code": code, "op": "enrol"}, jar, client_ip=ALICE.client_ip)
    assert done.verdict is Verdict.ENROLLED and done.page is None and done.mode is Mode.STEP_UP
    assert done.released == SUCCESS  # exactly what a pass without the offer releases
    assert done.account_key == ALICE.account_key and done.login_id == ALICE.login_id
    assert done.set_cookies[0].startswith("lg-hold=;") and any(c.startswith("lgd-") for c in done.set_cookies)
    assert await svc.enrolments.enrolled(ALICE.account_key, clock.now())
    (blob,) = await store.execute([Get(record_key(ALICE.account_key))], clock.now())
    assert decode_secret(secret) not in bytes(blob) and secret.encode() not in bytes(blob)  # sealed

    again = await svc.answer({**fields, "code": code, "op": "enrol"}, jar, client_ip=ALICE.client_ip)
    assert again.released is None and again.page is not None and again.page.status == 410  # once
    skip = await svc.answer({**fields, "op": "skip"}, jar, client_ip=ALICE.client_ip)
    assert skip.released is None and skip.verdict is Verdict.EXPIRED

    # The next challenge for the account uses the app, and the confirming code is spent.
    nxt = await svc.step_up(ALICE, SUCCESS, True)
    assert b"authenticator app" in nxt.body
    reuse = await svc.answer(form(nxt, code), cookies(nxt), client_ip=ALICE.client_ip)
    assert reuse.verdict is Verdict.WRONG
    clock.advance(30)
    ok = await svc.answer(form(nxt, totp(decode_secret(secret), clock.now())), cookies(nxt), client_ip="192.0.2.9")
    assert ok.verdict is Verdict.PASSED and ok.released == SUCCESS  # no offer once enrolled


def offer_of_body(page: Page) -> str:
    key = re.search(r'<code class="key">([A-Z2-7 ]+)</code>', page.body.decode())
    assert key is not None
    return key.group(1).replace(" ", "")


async def test_skip_releases_without_an_app(svc: Challenges, smtp_server: Smtp) -> None:
    a = await passed(svc, smtp_server)
    assert a.page is not None
    fields, jar, _ = offer_of(a.page)
    done = await svc.answer({**fields, "code": "", "op": "skip"}, jar, client_ip=ALICE.client_ip)
    assert done.verdict is Verdict.ENROL_SKIPPED and done.released == SUCCESS and done.login_id == ALICE.login_id
    assert not await svc.enrolments.enrolled(ALICE.account_key, T0)
    assert (await svc.answer({**fields, "op": "skip"}, jar, client_ip=ALICE.client_ip)).released is None


async def test_the_offer_is_bound_to_the_browser(svc: Challenges, smtp_server: Smtp) -> None:
    a = await passed(svc, smtp_server)
    assert a.page is not None
    fields, jar, _ = offer_of(a.page)
    page = await svc.step_up(ALICE, SUCCESS, True)
    hold_jar = cookies(page)
    hold_form = form(page, "1")
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({**fields, "op": "skip"}, {}),  # another browser (no cookie)
        ({**fields, "op": "skip"}, hold_jar),  # another browser's cookie
        ({**fields, "csrf": "x", "op": "skip"}, jar),  # forged token
        ({**fields, "csrf": hold_form["csrf"], "op": "skip"}, jar),  # a hold's token is no offer token
        ({"offer": hold_form["hold"], "csrf": hold_form["csrf"], "op": "skip"}, hold_jar),  # a hold is no offer
    ]
    for f, c in attempts:
        r = await svc.answer(f, c, client_ip=ALICE.client_ip)
        assert r.verdict is None and r.released is None and r.page is not None and r.page.status == 403
    # The offer token does not answer a hold either.
    r = await svc.answer({"hold": fields["offer"], "csrf": fields["csrf"], "code": "1"}, jar, client_ip="192.0.2.1")
    assert r.verdict is None and r.page is not None and r.page.status == 403
    done = await svc.answer({**fields, "op": "skip"}, jar, client_ip=ALICE.client_ip)
    assert done.released == SUCCESS  # none of the above used it up


async def test_the_offer_expires_with_the_held_answer(
    svc: Challenges, smtp_server: Smtp, clock: VirtualClock
) -> None:
    a = await passed(svc, smtp_server)
    assert a.page is not None
    fields, jar, secret = offer_of(a.page)
    clock.advance(601)
    code = totp(decode_secret(secret), clock.now())
    for op in ("enrol", "skip"):
        r = await svc.answer({**fields, "code": code, "op": op}, jar, client_ip=ALICE.client_ip)
        assert r.verdict is Verdict.EXPIRED and r.released is None and r.page is not None and r.page.status == 410
    assert not await svc.enrolments.enrolled(ALICE.account_key, clock.now())


async def test_wrong_app_codes_are_bounded_then_only_continue_is_left(svc: Challenges, smtp_server: Smtp) -> None:
    a = await passed(svc, smtp_server)
    assert a.page is not None
    fields, jar, secret = offer_of(a.page)
    wrong = f"{(int(totp(decode_secret(secret), T0)) + 1) % 10**6:06d}"
    statuses = []
    for _ in range(svc.settings.max_tries):
        r = await svc.answer({**fields, "code": wrong, "op": "enrol"}, jar, client_ip=ALICE.client_ip)
        assert r.page is not None
        statuses.append(r.page.status)
    assert statuses == [422] * (svc.settings.max_tries - 1) + [429]
    assert r.page is not None and b'value="enrol"' not in r.page.body and b"<svg" not in r.page.body
    late = await svc.answer(
        {**fields, "code": totp(decode_secret(secret), T0), "op": "enrol"}, jar, client_ip=ALICE.client_ip
    )
    assert late.page is not None and late.page.status == 429  # even the right code: tries are spent
    assert not await svc.enrolments.enrolled(ALICE.account_key, T0)
    done = await svc.answer({**fields, "op": "skip"}, jar, client_ip=ALICE.client_ip)
    assert done.verdict is Verdict.ENROL_SKIPPED and done.released == SUCCESS


@pytest.mark.parametrize(
    ("totp_settings", "mode", "enrolled"),
    [
        ({}, "step_up", False),  # self-enrolment is off by default
        ({"self_enrol": True, "enabled": False}, "step_up", False),  # no TOTP channel
        ({"self_enrol": True}, "before_upstream", False),  # the password was not checked
        ({"self_enrol": True}, "step_up", True),  # an app is never replaced
    ],
)
async def test_not_offered(
    store: Store, smtp_server: Smtp, totp_settings: dict[str, Any], mode: str, enrolled: bool
) -> None:
    settings = make_settings(smtp_server, mode=mode, channels=_channels(smtp_server, {"totp": totp_settings}))
    svc = Challenges(settings, store, clock=VirtualClock(T0))
    try:
        if enrolled:  # enrolled by an operator, after the challenge was issued by e-mail
            page = await svc.step_up(ALICE, SUCCESS, True)
            await svc.enrolments.enroll(ALICE.account_key, "JBSWY3DPEHPK3PXP", T0)
        elif mode == "before_upstream":
            page = await svc.before_upstream(ALICE, svc.request_message("POST", "/login", [], b"id=a&pw=b"))
        else:
            page = await svc.step_up(ALICE, SUCCESS, True)
        await svc.drain()
        a = await svc.answer(form(page, mailed_code(smtp_server)), cookies(page), client_ip=ALICE.client_ip)
        assert a.verdict is Verdict.PASSED and a.page is None and a.released is not None
    finally:
        await svc.aclose()


async def test_json_variant_in_japanese(svc: Challenges, smtp_server: Smtp) -> None:
    a = await passed(svc, smtp_server, accept="application/json", accept_language="ja")
    assert a.page is not None and dict(a.page.headers)["Content-Type"] == "application/json"
    doc = json.loads(a.page.body)
    assert doc["state"] == "enrol_offer" and doc["lang"] == "ja" and "認証アプリ" in doc["prompt"]
    assert doc["ops"] == ["enrol", "skip"] and doc["action"] == "/.loginguard/challenge" and doc["digits"] == 6
    assert doc["otpauth"].startswith("otpauth://totp/Example:alice%40example.com?secret=" + doc["secret"])
    jar = {binding_cookie_name(False): a.page.header("Set-Cookie")[0].split(";")[0].split("=", 1)[1]}
    fields = {"offer": doc["offer"], "csrf": doc["csrf"]}
    w = await svc.answer({**fields, "code": "x", "op": "enrol"}, jar, client_ip="192.0.2.1", accept="application/json")
    assert w.page is not None and json.loads(w.page.body)["tries_left"] == 4
    code = totp(decode_secret(doc["secret"]), T0)
    done = await svc.answer({**fields, "code": code, "op": "enrol"}, jar, client_ip="192.0.2.1")
    assert done.verdict is Verdict.ENROLLED and done.released == SUCCESS


@pytest.mark.parametrize("state", list(EnrolState))
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_offer_state_renders_safely_and_accessibly(state: EnrolState, lang: str) -> None:
    brand = BrandSettings(title='Help <desk> & "co"', name="Ex<ample>", support="<b>0120</b>")
    pages = Pages(brand, "/.loginguard/challenge", "/login", 6, 5)
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    view = EnrolView(state, lang, "O" * 22, "C" * 48, secret, "otpauth://totp/x?secret=" + secret, "<svg></svg>", 6, 2)
    page = render(pages, view, False)
    body = page.body.decode()
    assert page.status == {"enrol_offer": 200, "enrol_wrong_code": 422, "enrol_too_many_tries": 429}[state.value]
    assert f'<html lang="{lang}">' in body and "<script" not in body and "Ex<ample>" not in body
    assert 'name="offer" value="' + "O" * 22 in body and 'value="skip"' in body
    if state is EnrolState.TOO_MANY_TRIES:
        assert 'name="code"' not in body and secret not in body and "<svg" not in body
    else:
        assert '<label for="code">' in body and 'autocomplete="one-time-code"' in body
        assert grouped(secret) in body and body.index('value="enrol"') < body.index('value="skip"')
        assert ('aria-describedby="msg hint"' in body) is (state is EnrolState.WRONG_CODE)
    assert dict(page.headers)["Content-Language"] == lang
    doc = json.loads(render(pages, view, True).body)
    assert doc["state"] == state.value and ("secret" in doc) is (state is not EnrolState.TOO_MANY_TRIES)


# ---- through the guard -----------------------------------------------------------------------------


async def test_a_browser_sets_up_its_app_between_the_code_and_the_upstreams_session(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp, "    totp: {self_enrol: true, issuer: Example}\n"))
    base = f"http://127.0.0.1:{server.public_port}"
    browser = Browser(base)
    try:
        _, _, page, _ = await browser.post("/login", {"username": LEGACY.login, "password": LEGACY.password})
        await server._challenges.drain()
        status, headers, offer, set_cookies = await browser.post(
            "/.loginguard/challenge", {**form_fields(page), "code": code_in(box), "op": "verify"}
        )
        assert status == 200 and "<svg" in offer and headers["Content-Security-Policy"] == PAGE_CSP
        assert not any(c.startswith("SID=") for c in set_cookies)  # still held
        assert any(c.startswith("lg-hold=") and "Max-Age=600" in c for c in set_cookies)
        fields = dict(re.findall(r'name="(offer|csrf)" value="([^"]+)"', offer))
        key = re.search(r'<code class="key">([A-Z2-7 ]+)</code>', offer)
        assert key is not None
        app = pyotp.TOTP(key.group(1).replace(" ", ""))
        status, headers, _, set_cookies = await browser.post(
            "/.loginguard/challenge", {**fields, "code": app.now(), "op": "enrol"}
        )
        assert status == 302 and headers["Location"] == "/contact"  # released exactly as before
        assert any(c.startswith("SID=") for c in set_cookies)
        status, contact = await browser.get("/contact")
        assert status == 200 and "Contact form" in contact
        # A new browser is challenged through the app now, and nothing is mailed for it.
        other = Browser(base)
        _, _, page, _ = await other.post("/login", {"username": LEGACY.login, "password": LEGACY.password})
        await other.close()
        await server._challenges.drain()
        assert "authenticator app" in page and len(box.messages) == 1
    finally:
        await browser.close()
        await server.stop(1)
