"""The mitmproxy addon, driven through mitmproxy's own test helpers and addon manager.

Flows come from ``mitmproxy.test.tflow``; hooks are invoked the way mitmproxy
invokes them (``addons.invoke_addon`` with the real hook classes), so async and
sync hooks are exercised as under ``mitmdump``.  The engine, the memory store
and the request log are real; the only socket is the admin listener's.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from mitmproxy import exceptions, hooks, http
from mitmproxy.proxy.layers.http._hooks import (  # where they are defined (and typed)
    HttpErrorHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.proxy.mode_specs import ProxyMode

with warnings.catch_warnings():
    # taddons imports mitmproxy's addons, and with them ldap3, which trips a pyasn1
    # deprecation at import time; the suite's "warnings are errors" is for our code.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import taddons, tflow, tutils

from guard.challenge.keys import new_key
from guard.challenge.service import Challenges
from guard.engine import RequestFacts
from guard.mitm.addon import GuardAddon
from guard.pii.token import TOKEN_RE
from guard.store.base import StoreError
from tests.challenge_fixtures import ALWAYS_2FA as CHALLENGE_RULES
from tests.test_challenge_channels import Mailbox
from tests.test_challenge_e2e import code_in, form_fields, mailbox

__all__ = ["mailbox"]  # a fixture: the real SMTP server the codes go through

RULES = """\
rules:
  - id: admin-path
    description: nobody gets /admin
    when: {path: {prefix: /admin}}
    action: block
  - id: failures-ban
    description: more than one failed login from one IP in 10 minutes
    when:
      velocity: {key: ip, metric: failures, window: 10m, over: 1}
    action: ban
    ban: {key: ip, duration: 10m}
"""

BANNED = "203.0.113.9"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def write_config(tmp: Path, extra: str = "", rules: str = RULES) -> Path:
    (tmp / "rules.yaml").write_text(rules)
    path = tmp / "guard.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:9   # unused under mitmproxy: --mode decides\n"
        "admin: {listen: '127.0.0.1:0'}\n"
        "trusted_proxies: [10.0.0.0/8]\n"
        "log: {file: access.log}\n"
        "logins:\n  - {id: login, path: /login}\n"
        "rules: [rules.yaml]\n"
        "attack: {enabled: false}\n"
        "secret_key: test-secret-key-0123456789\n" + extra
    )
    return path


@pytest.fixture(autouse=True)
def _no_guard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """GUARD_* variables override config keys; the tests' configs must be what they say."""
    import os

    for name in list(os.environ):
        if name.startswith("GUARD_"):
            monkeypatch.delenv(name)


@dataclass
class Guard:
    tctx: taddons.context
    addon: GuardAddon
    dir: Path

    async def hook(self, hook: hooks.Hook) -> None:
        await self.tctx.master.addons.invoke_addon(self.addon, hook)

    async def exchange(self, f: http.HTTPFlow, answer: http.Response | None = None) -> http.HTTPFlow:
        """Run a flow through every hook, in mitmproxy's order; ``answer`` plays the upstream."""
        await self.hook(HttpRequestHeadersHook(f))
        if f.error is not None:
            await self.hook(HttpErrorHook(f))
            return f
        await self.hook(HttpRequestHook(f))
        if f.response is None:
            f.response = answer or tutils.tresp()
        await self.hook(HttpResponseHeadersHook(f))
        await self.hook(HttpResponseHook(f))
        return f

    def access_log(self) -> list[dict[str, Any]]:
        """The decision lines of ``log.file`` (ban events share the file)."""
        lines = [json.loads(line) for line in (self.dir / "access.log").read_text().splitlines()]
        return [x for x in lines if x["event"] == "decision"]  # written in the order they were recorded


def context(addon: GuardAddon) -> taddons.context:
    """mitmproxy's test context, using the test's event loop (its helpers are untyped)."""
    return taddons.context(addon)  # type: ignore[no-untyped-call]


def configure(tctx: taddons.context, addon: GuardAddon, path: Path) -> None:
    """Set ``guard_config`` as ``--set`` would: a refusal raises OptionsError and rolls back."""
    tctx.configure(addon, guard_config=str(path))  # type: ignore[no-untyped-call]


async def start(tmp: Path, config: Path) -> AsyncIterator[Guard]:
    addon = GuardAddon()
    with context(addon) as tctx:
        configure(tctx, addon, config)
        await addon.running()
        assert addon.engine is not None
        try:
            yield Guard(tctx, addon, tmp)
        finally:
            await addon.done()


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[Guard]:
    async for g in start(tmp_path, write_config(tmp_path)):
        assert g.addon.engine is not None
        await g.addon.engine.ban(f"ip:{BANNED}", 600)
        yield g


def make_flow(
    path: str = "/", method: str = "GET", peer: str = "192.0.2.10", headers: dict[str, str] | None = None,
    body: bytes = b"", reverse: bool = True,
) -> http.HTTPFlow:
    req = http.Request.make(method, f"http://app.test{path}", body)
    for name, value in {"Host": "app.test", **(headers or {})}.items():
        req.headers[name] = value
    f = tflow.tflow(req=req)
    f.client_conn.peername = (peer, 40000)
    if reverse:
        f.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    return f


def login_flow(peer: str, password: str = "wrong") -> http.HTTPFlow:
    return make_flow("/login", "POST", peer, FORM, f"username=alice&password={password}".encode())


# ---- one request, decided from its headers ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    peer: str = "192.0.2.10"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None              # the guard's answer; None: forwarded
    client_ip: str = "192.0.2.10"
    upstream_xff: str | None = None        # X-Forwarded-For the upstream gets (reverse mode)
    reverse: bool = True
    upstream: tuple[tuple[str, tuple[str, ...]], ...] = ()  # more fields the upstream gets, all their values


CASES = [
    Case("pass-through", upstream_xff="192.0.2.10"),
    Case("path rule blocks", path="/admin/users", status=403),
    Case("path rule sees through encoding", path="/%61dmin//users", status=403),
    Case("banned IP blocked before the body", peer=BANNED, status=403, client_ip=BANNED),
    Case("IPv4-mapped peer is the same client", peer=f"::ffff:{BANNED}", status=403, client_ip=BANNED),
    Case("banned IP forging XFF stays banned", peer=BANNED, headers=(("X-Forwarded-For", "192.0.2.55"),),
         status=403, client_ip=BANNED),
    Case("forged XFF from untrusted peer ignored", headers=(("X-Forwarded-For", BANNED),),
         upstream_xff="192.0.2.10"),
    Case("forged Forwarded ignored too", headers=(("Forwarded", f"for={BANNED}"),),
         upstream_xff="192.0.2.10"),
    Case("trusted hop's XFF used", peer="10.0.0.5", headers=(("X-Forwarded-For", BANNED),),
         status=403, client_ip=BANNED),
    Case("trusted chain walked from the right", peer="10.0.0.5",
         headers=(("X-Forwarded-For", f"{BANNED}, 192.0.2.77"),), client_ip="192.0.2.77",
         upstream_xff=f"{BANNED}, 192.0.2.77, 10.0.0.5"),
    Case("regular proxy mode leaves headers alone", headers=(("X-Forwarded-For", "198.51.100.1"),),
         upstream_xff="198.51.100.1", reverse=False),
    Case("forged host, proto and real IP replaced",  # (tflow's client connection is TLS: https)
         headers=(("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Proto", "gopher"), ("X-Real-IP", BANNED)),
         upstream_xff="192.0.2.10",
         upstream=(("X-Forwarded-Host", ("app.test",)), ("X-Forwarded-Proto", ("https",)), ("X-Real-IP", ()))),
    Case("trusted hop: the other chain is the client's own, dropped", peer="10.0.0.5",
         headers=(("X-Forwarded-For", "192.0.2.77"), ("Forwarded", f"for={BANNED}"), ("X-Forwarded-Proto", "https")),
         client_ip="192.0.2.77", upstream_xff="192.0.2.77, 10.0.0.5",
         upstream=(("X-Forwarded-Proto", ("https",)), ("X-Forwarded-Host", ("app.test",)))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_request_headers_phase(guard: Guard, case: Case) -> None:
    f = make_flow(case.path, peer=case.peer, headers=dict(case.headers), reverse=case.reverse)
    await guard.hook(HttpRequestHeadersHook(f))
    meta = f.metadata["loginguard"]
    assert meta["client_ip"] == case.client_ip
    if case.status is None:
        assert f.response is None
        assert f.request.stream is True  # not a login: the body streams to the upstream
        assert meta["action"] == "pass"
        assert f.request.headers.get_all("X-Forwarded-For") == [case.upstream_xff]
        if case.reverse:
            assert "Forwarded" not in f.request.headers
        for name, values in case.upstream:
            assert tuple(f.request.headers.get_all(name)) == values, name
    else:
        assert f.response is not None and f.response.status_code == case.status
        assert f.request.stream is False  # mitmproxy cannot answer and stream the request at once
        assert f.response.headers["Server"] == "loginguard"
        assert b"Access denied" in f.response.content  # type: ignore[operator]


async def test_api_clients_get_json(guard: Guard) -> None:
    f = make_flow("/admin", headers={"Accept": "application/json"})
    await guard.exchange(f)
    assert f.response is not None and f.response.status_code == 403
    assert f.response.headers["Content-Type"] == "application/json"
    assert json.loads(f.response.content or b"") == {
        "error": "blocked", "status": 403, "message": "This request was blocked.",
    }


# ---- logins: body in ``request``, outcome in ``response`` ----------------------------------------------


async def test_login_body_decided_in_request_and_outcome_counted_from_response(guard: Guard) -> None:
    failure = tutils.tresp(status_code=200)  # the form again: a failed login
    for _ in range(2):
        f = login_flow("192.0.2.20")
        await guard.hook(HttpRequestHeadersHook(f))
        assert f.request.stream is False and f.response is None  # buffered, for the request hook
        await guard.hook(HttpRequestHook(f))
        assert f.response is None  # forwarded
        f.response = failure.copy()
        await guard.hook(HttpResponseHeadersHook(f))
        assert f.response.stream is False  # read whole, for the outcome
        await guard.hook(HttpResponseHook(f))
        assert f.metadata["loginguard"]["login"] == "login"

    # Two failures counted from the responses: the third attempt is banned once its body is read.
    f = login_flow("192.0.2.20")
    await guard.hook(HttpRequestHeadersHook(f))
    assert f.response is None
    await guard.hook(HttpRequestHook(f))
    assert f.response is not None and f.response.status_code == 403
    assert f.metadata["loginguard"]["action"] == "ban"
    assert f.metadata["loginguard"]["reasons"] == ["failures-ban"]
    await guard.hook(HttpResponseHeadersHook(f))
    await guard.hook(HttpResponseHook(f))

    # ... and the ban now applies to everything from that IP, from the headers alone.
    g = await guard.exchange(make_flow("/", peer="192.0.2.20"))
    assert g.response is not None and g.response.status_code == 403

    # Successful logins (a redirect) are not failures: nobody else is banned.
    success = tutils.tresp(status_code=302, headers=http.Headers(Location="/home"), content=b"")
    for _ in range(3):
        h = await guard.exchange(login_flow("192.0.2.30", "right"), success.copy())
        assert h.response is not None and h.response.status_code == 302

    await guard.addon.done()
    lines = guard.access_log()
    assert [(x["ip"], x["status"], x["action"]) for x in lines[:3]] == [
        ("192.0.2.20", 200, "pass"), ("192.0.2.20", 200, "pass"), ("192.0.2.20", 403, "ban"),
    ]
    assert lines[0]["login"] == "login" and lines[0]["outcome"] == "failure"
    assert lines[0]["upstream_ms"] is not None and lines[2]["upstream_ms"] is None
    assert "wrong" not in (guard.dir / "access.log").read_text()  # never a password


@pytest.mark.parametrize(
    ("path", "peer", "body_header", "logged"),
    [
        ("/login", "192.0.2.10", ("Content-Length", str(2 * 1024 * 1024)), 413),  # above max_body_size
        ("/upload", BANNED, ("Content-Length", str(2 * 1024 * 1024)), 403),
        ("/upload", BANNED, ("Transfer-Encoding", "chunked"), 403),
    ],
    ids=["oversized login", "refused with a large body", "refused with a chunked body"],
)
async def test_bodies_too_large_to_buffer_are_closed_not_read(
    guard: Guard, path: str, peer: str, body_header: tuple[str, str], logged: int
) -> None:
    """mitmproxy reads the whole body before sending a response set early: closing avoids that."""
    f = make_flow(path, "POST", peer, FORM)
    f.request.headers[body_header[0]] = body_header[1]
    if body_header[0] == "Transfer-Encoding":
        del f.request.headers["Content-Length"]
    await guard.exchange(f)
    assert f.response is None and f.error is not None and f.error.msg == f.error.KILLED_MESSAGE
    await guard.addon.done()
    assert guard.access_log()[-1]["status"] == logged


@pytest.mark.parametrize("fail_open", [True, False])
async def test_store_failure_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_open: bool) -> None:
    config = write_config(tmp_path, f"store: {{fail_open: {str(fail_open).lower()}}}\n")
    async for g in start(tmp_path, config):
        assert g.addon.engine is not None

        async def down(*args: object) -> list[object]:
            raise StoreError("redis is down")

        monkeypatch.setattr(g.addon.engine.store, "execute", down)
        f = await g.exchange(login_flow("192.0.2.40"), tutils.tresp(status_code=200))
        assert f.response is not None
        if fail_open:
            assert f.response.status_code == 200 and f.metadata["loginguard"]["action"] == "log"
        else:
            assert f.response.status_code == 503 and f.metadata["loginguard"]["action"] == "unavailable"
            assert b"Temporarily unavailable" in (f.response.content or b"")


# ---- streaming, and PII rewritten in buffered pages ----------------------------------------------------

PHONE = "090-1234-5678"
CONTACT = (
    '<!doctype html><html><head><meta charset="utf-8"></head><body><form method="post" action="/contact">'
    f'<input type="hidden" name="phone" value="{PHONE}"><input type="hidden" name="csrf" value="c5rf-2021">'
    '<textarea name="message"></textarea></form></body></html>'
).encode()
VAULT_COOKIE = "__Host-lgpii"  # tflow's client connection is TLS: the vault cookie is the __Host- one


def html_answer(body: bytes = CONTACT, coding: str = "") -> http.Response:
    """The upstream's page, as it would arrive: ``raw`` bytes in the coding the headers say."""
    headers = [(b"Content-Type", b"text/html; charset=utf-8"), (b"ETag", b'"v1"'), (b"Cache-Control", b"public")]
    if coding:
        headers.append((b"Content-Encoding", coding.encode()))
        body = gzip.compress(body)
    return raw_answer(headers, body)


def raw_answer(headers: list[tuple[bytes, bytes]], body: bytes, status: int = 200) -> http.Response:
    resp = http.Response.make(status, b"", http.Headers(headers))
    resp.raw_content = body
    resp.headers["Content-Length"] = str(len(body))
    return resp


async def test_response_streaming_flags(guard: Guard, tmp_path: Path) -> None:
    f = await guard.exchange(make_flow("/page"), html_answer(b"<p>hello</p>"))
    assert f.response is not None and f.response.stream is False  # HTML: buffered for the PII rewriter
    g = await guard.exchange(make_flow("/file.bin"), tutils.tresp())
    assert g.response is not None and g.response.stream is True  # not HTML: streamed untouched
    await guard.addon.done()

    async for off in start(tmp_path, write_config(tmp_path, "pii: {enabled: false}\n")):
        h = await off.exchange(make_flow("/page"), html_answer(b"<p>hello</p>"))
        assert h.response is not None and h.response.stream is True  # PII off: HTML streams too


@pytest.mark.parametrize("coding", ["", "gzip"])
async def test_pii_hidden_field_tokenized_in_the_page_and_swapped_back_on_submit(guard: Guard, coding: str) -> None:
    f = await guard.exchange(make_flow("/contact"), html_answer(coding=coding))
    resp = f.response
    assert resp is not None and resp.status_code == 200
    page = resp.get_content()
    assert page is not None and PHONE.encode() not in page
    token = re.search(rb'name="phone" value="([^"]+)"', page)
    assert token is not None and TOKEN_RE.fullmatch(token.group(1).decode())
    assert b'value="c5rf-2021"' in page  # not PII: untouched
    # the headers of a rewritten page, as ``guard run`` sends them
    assert resp.headers.get("Content-Encoding") == (coding or None)
    assert resp.headers["Content-Length"] == str(len(resp.raw_content or b""))
    assert "ETag" not in resp.headers and resp.headers["Cache-Control"] == "private"
    (cookie,) = resp.headers.get_all("Set-Cookie")
    assert cookie.startswith(f"{VAULT_COOKIE}=")
    browser = cookie.split(";", 1)[0]

    # the form comes back: the upstream gets the phone number again, with the body's new length
    body = b"phone=" + token.group(1) + b"&csrf=c5rf-2021&message=hello"
    sub = make_flow("/contact", "POST", headers={**FORM, "Cookie": f"theme=dark; {browser}"}, body=body)
    await guard.hook(HttpRequestHeadersHook(sub))
    assert sub.request.stream is False and sub.response is None  # buffered for the swap
    await guard.hook(HttpRequestHook(sub))
    assert sub.response is None  # forwarded
    assert sub.request.content == f"phone={PHONE}&csrf=c5rf-2021&message=hello".encode()
    assert sub.request.headers["Content-Length"] == str(len(sub.request.content or b""))

    # another browser's cookie opens nothing: the token is emptied, never resolved
    other = make_flow("/contact", "POST", headers={**FORM, "Cookie": f"{VAULT_COOKIE}={'A' * 22}"}, body=body)
    await guard.hook(HttpRequestHeadersHook(other))
    await guard.hook(HttpRequestHook(other))
    assert PHONE.encode() not in (other.request.content or b"")

    # a GET form: tokens in the query are swapped in ``requestheaders``, the body streams
    query = make_flow(f"/search?phone={token.group(1).decode()}&q=1", headers={"Cookie": browser})
    await guard.hook(HttpRequestHeadersHook(query))
    assert query.request.path == f"/search?phone={PHONE}&q=1" and query.request.stream is True


async def test_pii_swap_with_the_store_down_is_a_503_not_blank_fields(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await guard.exchange(make_flow("/contact"), html_answer())
    assert f.response is not None
    token = re.search(rb'name="phone" value="([^"]+)"', f.response.content or b"")
    assert token is not None
    browser = f.response.headers["Set-Cookie"].split(";", 1)[0]
    assert guard.addon.engine is not None

    async def down(*args: object) -> list[object]:
        raise StoreError("redis is down")

    monkeypatch.setattr(guard.addon.engine.store, "execute", down)
    sub = make_flow("/contact", "POST", headers={**FORM, "Cookie": browser}, body=b"phone=" + token.group(1))
    await guard.exchange(sub)
    assert sub.response is not None and sub.response.status_code == 503


@pytest.mark.parametrize("coding", ["", "gzip"])
async def test_a_page_with_nothing_to_change_keeps_its_validators(guard: Guard, coding: str) -> None:
    """As in ``guard run``: a page passed on unread goes out in the upstream's bytes with its
    ETag and caching; only ranges stay off.  A page with PII loses both (test above)."""
    clean = CONTACT.replace(PHONE.encode(), b"")
    answer = html_answer(clean, coding)
    sent = answer.raw_content
    f = await guard.exchange(make_flow("/contact"), answer)
    resp = f.response
    assert resp is not None and resp.status_code == 200
    assert resp.raw_content == sent and resp.get_content() == clean   # not re-encoded either
    assert resp.headers["ETag"] == '"v1"' and resp.headers["Cache-Control"] == "public"
    assert resp.headers["Accept-Ranges"] == "none" and "Set-Cookie" not in resp.headers
    assert resp.headers["Content-Length"] == str(len(resp.raw_content or b""))
    await guard.addon.done()


async def test_a_page_that_does_not_decode_is_a_502_not_its_pii(guard: Guard) -> None:
    broken = raw_answer([(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")], b"not gzip" + CONTACT)
    f = await guard.exchange(make_flow("/contact"), broken)
    assert f.response is not None and f.response.status_code == 502
    assert PHONE.encode() not in (f.response.content or b"")


# ---- the challenge: interstitial, code form, held answer or request ------------------------------------

ALICE = "alice@example.com"
CHALLENGE_PATH = "/.loginguard/challenge"


def challenge_config(tmp: Path, smtp: int, mode: str = "step_up") -> Path:
    return write_config(tmp, f"""\
challenge:
  keys: ['{new_key()}']
  mode: {mode}
  dispatch_delay: 0s
  channels:
    email: {{host: 127.0.0.1, port: {smtp}, security: none, sender: guard@example.com, timeout: 5s}}
""", CHALLENGE_RULES)


def upstream_login() -> http.Response:
    """The upstream accepting the password: a redirect and its session cookie."""
    return raw_answer([(b"Location", b"/home"), (b"Set-Cookie", b"SID=upstream-session; HttpOnly")], b"", 302)


def challenge_post(cookies: list[str], fields: dict[str, str], code: str, peer: str = "192.0.2.50") -> http.HTTPFlow:
    jar = "; ".join(c.split(";", 1)[0] for c in cookies)
    body = urlencode({**fields, "code": code, "op": "verify"}).encode()
    return make_flow(CHALLENGE_PATH, "POST", peer, {**FORM, "Cookie": jar}, body)


async def answered_by_the_addon(guard: Guard, f: http.HTTPFlow) -> http.Response:
    """Run the request hooks only: whatever the flow gets, the upstream was never asked."""
    await guard.hook(HttpRequestHeadersHook(f))
    await guard.hook(HttpRequestHook(f))
    assert f.response is not None
    resp = f.response
    await guard.hook(HttpResponseHeadersHook(f))
    await guard.hook(HttpResponseHook(f))
    return resp


@pytest.fixture
async def challenged(
    tmp_path: Path, mailbox: tuple[Mailbox, int], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Guard, Mailbox]]:
    """A guard whose rules challenge every login (``challenge.mode`` from the parameter), and its mailbox."""
    box, smtp = mailbox
    async for g in start(tmp_path, challenge_config(tmp_path, smtp, getattr(request, "param", "step_up"))):
        yield g, box


def service(g: Guard) -> Challenges:
    assert g.addon.engine is not None and isinstance(g.addon.engine.challenges, Challenges)
    return g.addon.engine.challenges


async def test_step_up_holds_the_answer_and_only_the_right_code_releases_it(
    challenged: tuple[Guard, Mailbox]
) -> None:
    g, box = challenged
    svc = service(g)
    body = urlencode({"username": ALICE, "password": "right"}).encode()
    f = await g.exchange(make_flow("/login", "POST", "192.0.2.50", FORM, body), upstream_login())
    page = f.response
    assert page is not None and page.status_code == 200 and b"one-time-code" in (page.content or b"")
    cookies = page.headers.get_all("Set-Cookie")
    assert not any("SID" in c for c in cookies)  # the upstream's session is held back
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    await svc.drain()
    code = code_in(box)
    assert box.messages[0][0].rcpt_tos == [ALICE]
    fields = form_fields((page.content or b"").decode())

    wrong = await answered_by_the_addon(g, challenge_post(cookies, fields, "000000" if code != "000000" else "1"))
    assert wrong.status_code != 302 and b"one-time-code" in (wrong.content or b"")
    assert not any("SID" in c for c in wrong.headers.get_all("Set-Cookie"))

    right = await answered_by_the_addon(g, challenge_post(cookies, fields, code))
    assert right.status_code == 302 and right.headers["Location"] == "/home"
    released = right.headers.get_all("Set-Cookie")
    assert "SID=upstream-session; HttpOnly" in released  # the upstream's answer, as it sent it
    device = [c for c in released if c.startswith("__Host-lgd")]  # and a trusted-device cookie
    assert device and right.headers["Content-Length"] == "0"

    # single use: the same code again releases nothing
    again = await answered_by_the_addon(g, challenge_post(cookies, fields, code))
    assert again.status_code != 302

    # the trusted device skips the next challenge: the login goes through, the upstream answers
    nxt = make_flow("/login", "POST", "192.0.2.50", {**FORM, "Cookie": device[0].split(";", 1)[0]}, body)
    await g.exchange(nxt, upstream_login())
    assert nxt.response is not None and nxt.response.status_code == 302
    assert nxt.metadata["loginguard"]["reasons"] == ["always-2fa", "known-device"]

    await g.addon.done()
    lines = g.access_log()
    assert [(x["path"], x["status"], x["action"]) for x in lines] == [
        ("/login", 200, "challenge"), (CHALLENGE_PATH, wrong.status_code, "pass"), (CHALLENGE_PATH, 302, "pass"),
        (CHALLENGE_PATH, again.status_code, "pass"), ("/login", 302, "log"),
    ]


async def test_a_wrong_password_gets_the_same_interstitial_and_no_code(challenged: tuple[Guard, Mailbox]) -> None:
    g, box = challenged
    pages = []
    for password, answer in (("right", upstream_login()), ("wrong", tutils.tresp(status_code=200))):
        body = urlencode({"username": ALICE, "password": password}).encode()
        f = await g.exchange(make_flow("/login", "POST", "192.0.2.51", FORM, body), answer)
        assert f.response is not None
        pages.append((f.response.status_code, scrub(f.response.content or b"")))
    assert pages[0] == pages[1]
    await service(g).drain()
    assert len(box.messages) == 1  # only the right password's hold sent a code


@pytest.mark.parametrize("challenged", ["before_upstream"], indirect=True)
@pytest.mark.parametrize("accepted", [True, False], ids=["upstream accepts", "upstream refuses"])
async def test_before_upstream_holds_the_login_and_forwards_it_once_after_the_code(
    challenged: tuple[Guard, Mailbox], accepted: bool
) -> None:
    g, box = challenged
    body = urlencode({"username": ALICE, "password": "right" if accepted else "wrong"}).encode()
    page = await answered_by_the_addon(g, make_flow("/login", "POST", "192.0.2.52", FORM, body))
    assert page.status_code == 200 and b"one-time-code" in (page.content or b"")
    await service(g).drain()
    cookies = page.headers.get_all("Set-Cookie")
    fields = form_fields((page.content or b"").decode())

    f = challenge_post(cookies, fields, code_in(box), peer="192.0.2.52")
    await g.hook(HttpRequestHeadersHook(f))
    await g.hook(HttpRequestHook(f))
    # the flow is the held login now, and mitmproxy forwards it: once, as it would have gone
    assert f.response is None
    assert (f.request.method, f.request.path, f.request.content) == ("POST", "/login", body)
    assert f.request.headers["X-Forwarded-For"] == "192.0.2.52"
    f.response = upstream_login() if accepted else tutils.tresp(status_code=200)
    await g.hook(HttpResponseHeadersHook(f))
    assert f.response.stream is False  # the outcome decides the device cookie
    await g.hook(HttpResponseHook(f))
    released = f.response.headers.get_all("Set-Cookie")
    # the code proved the second factor, not the password: a trusted device only for an accepted login
    assert any(c.startswith("__Host-lgd") for c in released) is accepted
    assert ("SID=upstream-session; HttpOnly" in released) is accepted


def scrub(page: bytes) -> bytes:
    """A page without its random tokens (hold id, CSRF token)."""
    return re.sub(rb"[A-Za-z0-9_-]{20,}", b"TOKEN", page)


# ---- failures are never a forwarded request -----------------------------------------------------------


async def test_engine_exception_is_a_500_page_not_a_forward(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(facts: RequestFacts) -> None:
        raise RuntimeError("bug")

    assert guard.addon.engine is not None
    monkeypatch.setattr(guard.addon.engine, "on_request", broken)
    f = make_flow("/")
    await guard.hook(HttpRequestHeadersHook(f))
    assert f.response is not None and f.response.status_code == 500
    assert b"bug" not in (f.response.content or b"")


async def test_without_a_config_every_request_gets_503() -> None:
    addon = GuardAddon()
    with context(addon) as tctx:
        f = make_flow("/")
        await tctx.master.addons.invoke_addon(addon, HttpRequestHeadersHook(f))
        assert f.response is not None and f.response.status_code == 503


async def test_a_flow_first_seen_in_request_is_still_judged(guard: Guard) -> None:
    """A script reload swaps the addon mid-flow: the new instance judges what it has not seen."""
    f = make_flow("/admin", "POST", body=b"x=1")
    await guard.hook(HttpRequestHook(f))
    assert f.response is not None and f.response.status_code == 403


async def test_setting_the_option_again_reloads_rules_live(guard: Guard, tmp_path: Path) -> None:
    config = tmp_path / "guard.yaml"
    (tmp_path / "rules.yaml").write_text(RULES.replace("prefix: /admin", "prefix: /private"))
    configure(guard.tctx, guard.addon, config)
    for _ in range(100):  # Engine.reload compiles off the event loop, then swaps
        f = await guard.exchange(make_flow("/private"))
        if f.response is not None and f.response.status_code == 403:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the new rules never took effect")
    g = await guard.exchange(make_flow("/admin"))
    assert g.response is not None and g.response.status_code == 200

    # a bad file while running is refused, and the running rules stay
    (tmp_path / "rules.yaml").write_text("rules: [{id: x}]\n")
    with pytest.raises(exceptions.OptionsError, match=r"rules\.yaml"):
        configure(guard.tctx, guard.addon, config)
    h = await guard.exchange(make_flow("/private"))
    assert h.response is not None and h.response.status_code == 403


# ---- configure(): bad files are refused with their location ---------------------------------------------


@pytest.fixture
async def refusing(tmp_path: Path) -> AsyncIterator[tuple[taddons.context, GuardAddon]]:
    """An addon in a context that uses the test's loop (without one, taddons makes a loop it never closes)."""
    addon = GuardAddon()
    with context(addon) as tctx:
        yield tctx, addon


@pytest.mark.parametrize(
    ("extra", "rules", "where"),
    [
        ("listen_typo: 1\n", RULES, "guard.yaml:10:1: listen_typo"),
        ("store: {backend: sqlite}\n", RULES, "guard.yaml:10:9: store.backend"),
        ("", RULES.replace("over: 1", "over: many"), "rules.yaml:9:58: rules[1].when.velocity.over"),
    ],
    ids=["unknown key", "bad value", "bad rule file"],
)
async def test_bad_config_is_an_options_error_with_file_and_line(
    refusing: tuple[taddons.context, GuardAddon], tmp_path: Path, extra: str, rules: str, where: str
) -> None:
    tctx, addon = refusing
    config = write_config(tmp_path, extra, rules)
    with pytest.raises(exceptions.OptionsError) as err:
        configure(tctx, addon, config)
    assert where in str(err.value)
    assert tctx.options.guard_config == ""  # rolled back: nothing half-loaded
    assert addon.settings is None


async def test_missing_config_file(refusing: tuple[taddons.context, GuardAddon], tmp_path: Path) -> None:
    tctx, addon = refusing
    with pytest.raises(exceptions.OptionsError, match=r"nope\.yaml: file not found"):
        configure(tctx, addon, tmp_path / "nope.yaml")


async def test_a_byte_range_never_reaches_the_upstream_where_pages_are_rewritten(guard: Guard) -> None:
    # a 206 is never rewritten: a client must not get the bytes of one hidden value that way
    f = make_flow("/contact", headers={"Range": "bytes=120-132", "If-Range": '"v1"'})
    await guard.hook(HttpRequestHeadersHook(f))
    assert f.response is None and "Range" not in f.request.headers and "If-Range" not in f.request.headers
    plain = make_flow("/contact")
    await guard.hook(HttpRequestHeadersHook(plain))
    assert plain.response is None
