"""Targeted tests for the claims of docs/security.md that no other test holds.

One section per threat of the threat model, in its order.  Each test attacks the
guard the way the threat model says an attacker would (over real sockets where
the claim is about the wire) and checks the control, not the implementation:
the client IP an attacker can or cannot choose, the cookies a browser gets,
what a lock-out attempt achieves against the shipped rules, how long a hostile
input keeps a rule busy, what the admin API answers to every shape of wrong
token, what the interstitial reflects, what a dump of Redis hands over.
Claims already held elsewhere are cited in docs/security.md, not repeated here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from guard.challenge.channels.lookup import is_email
from guard.challenge.keys import new_key
from guard.challenge.settings import ChallengeSettings, EmailSettings
from guard.clientip import TrustedProxies, resolve
from guard.config import load_config_text
from guard.demo.legacyapp import make_accounts, make_app
from guard.engine import Action, Engine, RequestFacts, ResponseFacts, VirtualClock
from guard.http.pages import Pages
from guard.http.server import GuardServer
from guard.rules.loader import compile_documents
from guard.rules.registry import CompileEnv
from guard.store.memory import MemoryStore
from guard.yamlsource import SourceError, load_text
from tests.challenge_fixtures import ALWAYS_2FA, mailbox
from tests.proxy_fixtures import (
    GuardFactory,
    TLSFiles,
    Upstream,
    make_guard,
    parse_response,
    raw_exchange,
    tls_files,
    upstream,
)
from tests.test_challenge_channels import Mailbox
from tests.test_security_no_secrets import redis_dump

__all__ = ["mailbox", "make_guard", "tls_files", "upstream"]

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = make_accounts(8)
VICTIM = ACCOUNTS["user1@example.jp"]
KEY = new_key()
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PII_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"></head><body><form method="post" action="/form">'
    '<input type="hidden" name="phone" value="090-1234-5678"></form></body></html>'
)


# ---- surroundings: the legacy app, an SMTP server, guards built from config text -----------------------


async def _pii_page(request: web.Request) -> web.Response:
    return web.Response(text=PII_PAGE, content_type="text/html")


@pytest.fixture
async def legacy() -> AsyncIterator[int]:
    """The incident's legacy app, plus ``/form``: a page with a phone number in a hidden field."""
    app = make_app(ACCOUNTS)
    app.router.add_get("/form", _pii_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def shipped_rules_yaml() -> str:
    """The rule packs and IP lists exactly as shipped in guard.yaml (no GeoIP: not configured there)."""
    lists = ROOT / "rules" / "lists"
    return (
        f"rules: ['{ROOT / 'rules'}']\n"
        f"ip_lists:\n  allowlist: {{file: '{lists / 'allowlist.txt'}'}}\n"
        f"  blocklist: {{file: '{lists / 'blocklist.txt'}'}}\n"
    )


def challenge_yaml(smtp: int) -> str:
    return f"""challenge:
  keys: ['{KEY}']
  dispatch_delay: 0s
  brand:
    name: 'Shop"><img src=x onerror=alert(1)>'
    support: '<script>alert(1)</script> call 0120'
  channels:
    email: {{host: 127.0.0.1, port: {smtp}, security: none, sender: guard@example.com, timeout: 5s}}
"""


async def start_guard(tmp: Path, upstream_port: int, body: str, *, clock: VirtualClock | None = None) -> GuardServer:
    text = (
        f"listen: 127.0.0.1:0\nadmin: {{listen: '127.0.0.1:0'}}\nupstream: http://127.0.0.1:{upstream_port}\n"
        f"logins: [{{id: login, path: /login}}]\nstate_dir: '{tmp / 'state'}'\n" + body
    )
    server = GuardServer(load_config_text(text, env={}), clock=clock)
    await server.start()
    return server


def write_rules(tmp: Path, text: str) -> str:
    path = tmp / f"rules-{len(list(tmp.glob('rules-*.yaml')))}.yaml"
    path.write_text(text)
    return f"rules: ['{path}']\n"


class Client:
    """A browser-shaped client that shows every Set-Cookie and sends back the cookies it chose to keep."""

    def __init__(self, base: str, headers: dict[str, str] | None = None, ssl: Any = None) -> None:
        self.base = base
        self.headers = {"User-Agent": BROWSER, **(headers or {})}
        self.cookies: dict[str, str] = {}
        self.ssl = ssl
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def send(self, method: str, path: str, data: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, str, list[str], dict[str, str]]:
        h = {**self.headers, **(headers or {})}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(method, self.base + path, data=data, headers=h, allow_redirects=False,
                                     ssl=self.ssl) as resp:
            body = await resp.text()
            set_cookies = resp.headers.getall("Set-Cookie", [])
            for c in set_cookies:
                name, _, value = c.split(";", 1)[0].partition("=")
                if value:
                    self.cookies[name] = value
                else:
                    self.cookies.pop(name, None)
            return resp.status, body, set_cookies, dict(resp.headers)

    async def close(self) -> None:
        await self.http.close()


def form_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'name="(hold|csrf)" value="([^"]+)"', page))


async def mailed_code(server: GuardServer, box: Mailbox, login: str) -> str:
    await server._challenges.drain()  # codes go out in background tasks
    mails = [m for env, m in box.messages if env.rcpt_tos == [login]]
    assert mails, f"no code was mailed to {login}"
    body = mails[-1].get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"\b(\d{6,10})\b", body.get_content())
    assert found is not None
    return found.group(1)


def cookie(set_cookies: list[str], prefix: str) -> str:
    found = [c for c in set_cookies if c.split("=", 1)[0].startswith(prefix) and "Max-Age=0" not in c]
    assert len(found) == 1, (prefix, set_cookies)
    return found[0]


def attributes(set_cookie: str) -> set[str]:
    return {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]} | {
        a.strip().lower() for a in set_cookie.split(";")[1:] if a.strip().lower().startswith("samesite")}


# ==== IP spoofing ==========================================================================================

LB = TrustedProxies(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        # what the client wrote comes first; the balancer appended the address it saw (the last entry)
        (["198.51.100.1, 203.0.113.9"], "203.0.113.9"),                  # claims an allowlisted office IP
        (["198.51.100.1, 10.0.0.9, 203.0.113.9"], "203.0.113.9"),        # claims to be behind our own hop
        (["198.51.100.1", "203.0.113.9"], "203.0.113.9"),                # a second header of its own
        ([", ".join(["198.51.100.1"] * 40) + ", 203.0.113.9"], "203.0.113.9"),   # a long chain
        (["unknown, 203.0.113.9"], "203.0.113.9"),
        (["198.51.100.1, ::ffff:203.0.113.9"], "203.0.113.9"),           # one canonical form
        (["198.51.100.1, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),        # two trusted hops of ours
    ],
)
def test_a_forged_x_forwarded_for_prefix_never_chooses_the_client(xff: list[str], client: str) -> None:
    """Through a trusted balancer, only the entry it appended (the right-most untrusted one) counts."""
    assert resolve("10.0.0.2", LB, xff)[0] == client


ALLOW_OFFICE = """
rules:
  - id: allow-office
    description: the office may reach /private
    when: {ip: 198.51.100.0/24}
    action: allow
  - id: private
    description: nobody else may
    when: {path: {prefix: /private}}
    action: block
"""


async def test_a_forwarded_header_passed_on_by_a_trusted_balancer_is_not_believed(
    upstream: Upstream, make_guard: GuardFactory
) -> None:
    """A balancer that appends ``X-Forwarded-For`` passes a client's own ``Forwarded`` header on untouched.

    The guard must take the client from the header the balancer writes; believing the
    client's ``Forwarded: for=`` lets any client pick its address per request: every
    IP, subnet, country and ASN rule, every ban, and here the allowlist, at its choice.
    """
    g = await make_guard(upstream.url, rules=ALLOW_OFFICE, trusted_proxies=["127.0.0.1/32"])
    request = (
        b"GET /private/payroll HTTP/1.1\r\nHost: h\r\n"
        b"Forwarded: for=198.51.100.7\r\n"          # written by the client, passed on by the balancer
        b"X-Forwarded-For: 203.0.113.9\r\n"          # appended by the balancer: the address it saw
        b"Connection: close\r\n\r\n"
    )
    resp = parse_response(await raw_exchange(g.port, request))
    assert g.log()[-1]["ip"] == "203.0.113.9"
    assert resp.status == 403 and upstream.seen == []


@pytest.mark.parametrize(
    ("mode", "client_wrote", "balancer_wrote"),
    [
        ("x-forwarded-for", b"Forwarded: for=198.51.100.7", b"X-Forwarded-For: 203.0.113.9"),
        ("forwarded", b"X-Forwarded-For: 198.51.100.7", b"Forwarded: for=203.0.113.9"),
    ],
    ids=["x-forwarded-for", "forwarded"],
)
async def test_the_header_trusted_proxies_do_not_write_never_reaches_the_upstream(
    mode: str, client_wrote: bytes, balancer_wrote: bytes, upstream: Upstream, make_guard: GuardFactory
) -> None:
    """With ``forwarded_header`` naming what the balancer writes, the other header is the client's:
    passing it on (extended with our hop, as if it were a trusted chain) hands the forged
    address to an upstream that reads that header."""
    g = await make_guard(upstream.url, trusted_proxies=["127.0.0.1/32"], forwarded_header=mode)
    request = (b"GET /who HTTP/1.1\r\nHost: h\r\n" + client_wrote + b"\r\n" + balancer_wrote
               + b"\r\nConnection: close\r\n\r\n")
    assert parse_response(await raw_exchange(g.port, request)).status == 200
    assert g.log()[-1]["ip"] == "203.0.113.9"
    seen = upstream.seen[-1]
    forwarded = seen.header("Forwarded") + seen.header("X-Forwarded-For")
    assert not [v for v in forwarded if "198.51.100.7" in v], forwarded


# ==== Cookies the guard sets ==============================================================================


@pytest.mark.parametrize("transport", ["http", "tls", "trusted-https"])
async def test_guard_cookies_carry_the_right_flags(
    transport: str, tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int], tls_files: TLSFiles
) -> None:
    """Hold binding, trusted device and PII vault cookies: HttpOnly and SameSite always; Secure and
    ``__Host-`` whenever the browser is on https: TLS on our listener, or a trusted hop that terminated it.

    With the wrong name the guard also cannot read its own cookie back: a trusted device
    would be challenged on every login.
    """
    box, smtp = mailbox
    body = write_rules(tmp_path, ALWAYS_2FA) + challenge_yaml(smtp) + "attack: {enabled: false}\n"
    headers: dict[str, str] = {}
    ssl_ctx = None
    if transport == "tls":
        body += f"tls: {{cert: '{tls_files.cert}', key: '{tls_files.key}'}}\n"
        ssl_ctx = tls_files.client_context()
    elif transport == "trusted-https":
        body += "trusted_proxies: [127.0.0.1/32]\n"
        headers = {"X-Forwarded-For": "203.0.113.20", "X-Forwarded-Proto": "https"}
    server = await start_guard(tmp_path, legacy, body)
    scheme = "https" if transport == "tls" else "http"
    browser = Client(f"{scheme}://localhost:{server.public_port}", headers, ssl_ctx)
    secure = transport != "http"
    try:
        status, page, set_cookies, _ = await browser.send("POST", "/login", {"username": VICTIM.login,
                                                                            "password": VICTIM.password})
        assert status == 200 and "one-time-code" in page
        hold = cookie(set_cookies, "__Host-lg-hold" if secure else "lg-hold")
        code = await mailed_code(server, box, VICTIM.login)
        status, _, set_cookies, _ = await browser.send("POST", "/.loginguard/challenge",
                                                       {**form_fields(page), "code": code, "op": "verify"})
        assert status == 302
        device = cookie(set_cookies, "__Host-lgd-" if secure else "lgd-")
        status, _, _, _ = await browser.send("POST", "/login", {"username": VICTIM.login,
                                                               "password": VICTIM.password})
        assert status == 302, "the trusted device was not recognised: challenged again"
        status, _, set_cookies, _ = await browser.send("GET", "/form")
        assert status == 200
        vault = cookie(set_cookies, "__Host-lgpii" if secure else "lgpii")
    finally:
        await browser.close()
        await server.stop(1)
    for value, same_site in ((hold, "samesite=strict"), (device, "samesite=strict"), (vault, "samesite=lax")):
        flags = attributes(value)
        assert {"httponly", "path", same_site} <= flags, value
        assert ("secure" in flags) is secure, value
        assert "domain" not in flags, value


# ==== Code brute force and validity oracle ==================================================================


async def test_a_held_login_does_not_teach_the_guard_the_attackers_subnet(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    """A right password from a stuffing source is held behind the code; asking again must not release it.

    The held answer's success must not count as a login of the account from the
    attacker's subnet (``new_subnet``): if it does, the shipped stuffing rules stop
    matching, the retry goes straight to the upstream, and the attacker gets both the
    validity of the pair and the session cookie without ever seeing the code.
    """
    _box, smtp = mailbox
    server = await start_guard(tmp_path, legacy, shipped_rules_yaml() + challenge_yaml(smtp)
                               + "trusted_proxies: [127.0.0.1/32]\n")
    attacker = Client(f"http://127.0.0.1:{server.public_port}", {"X-Forwarded-For": "203.0.113.50"})
    answers = []
    try:
        for login, password in (("user2@example.jp", "leaked-1"), ("user3@example.jp", "leaked-2"),
                                (VICTIM.login, VICTIM.password), (VICTIM.login, VICTIM.password),
                                (VICTIM.login, VICTIM.password)):
            status, page, set_cookies, _ = await attacker.send("POST", "/login",
                                                               {"username": login, "password": password})
            answers.append((status, "one-time-code" in page, any(c.startswith("SID=") for c in set_cookies)))
    finally:
        await attacker.close()
        await server.stop(1)
    assert answers[2] == (200, True, False)             # the stuffing rule holds the right password
    assert answers[3:] == [(200, True, False)] * 2, f"retrying released the held login: {answers[3:]}"


NEW_SUBNET_2FA = """
rules:
  - id: new-subnet-2fa
    description: a login from a subnet the account never logged in from needs a second factor
    when: {login: true, new_subnet: {days: 90}}
    action: challenge
"""


async def test_a_login_released_by_its_code_counts_as_a_login_and_as_seen(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    """Once the code releases the held answer, the source has the upstream's success.

    The exposure report must then say *seen*, not *withheld* ("the attacker learned
    nothing"): whoever typed the code, the owner or an attacker who guessed or phished it,
    got the session.  And the account's history must learn the subnet, or its owner is
    challenged again from home on the next browser (a held answer that was never released
    teaches nothing: see the test above).
    """
    from guard.observe.ledger import FileLedger
    from guard.observe.reports import exposed

    box, smtp = mailbox
    server = await start_guard(tmp_path, legacy, write_rules(tmp_path, NEW_SUBNET_2FA) + challenge_yaml(smtp)
                               + "trusted_proxies: [127.0.0.1/32]\nattack: {enabled: false}\n")
    base, home = f"http://127.0.0.1:{server.public_port}", {"X-Forwarded-For": "203.0.113.30"}
    first, second = Client(base, home), Client(base, home)
    try:
        status, page, _, _ = await first.send("POST", "/login", {"username": VICTIM.login,
                                                                "password": VICTIM.password})
        assert status == 200 and "one-time-code" in page
        code = await mailed_code(server, box, VICTIM.login)
        status, _, _, _ = await first.send("POST", "/.loginguard/challenge",
                                           {**form_fields(page), "code": code, "op": "verify"})
        assert status == 302
        # another browser (no device cookie), same home subnet, a minute later
        status, page, _, _ = await second.send("POST", "/login", {"username": VICTIM.login,
                                                                 "password": VICTIM.password})
    finally:
        await first.close()
        await second.close()
        await server.stop(1)
    rows = await FileLedger(tmp_path / "state" / "exposure-ledger.jsonl", 1000).read()
    report = exposed(rows)
    assert report.accounts and all(a.seen for a in report.accounts), \
        "a released login is reported as withheld: 'the attacker learned nothing'"
    assert status == 302, "the subnet of a login released by its code was not learned"


async def test_the_per_source_hold_limit_counts_an_ipv6_64_as_one_source(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    """``send_limits.per_source`` bounds the holds (each a fresh code and ``max_tries`` guesses) one
    source can open.  Keyed on the full address, one IPv6 host rotating within its /64 has no limit at
    all: unlimited holds, so unlimited guesses at the codes of an account whose password it knows.
    """
    _box, smtp = mailbox
    server = await start_guard(tmp_path, legacy, write_rules(tmp_path, ALWAYS_2FA) + challenge_yaml(smtp)
                               + "trusted_proxies: [127.0.0.1/32]\nattack: {enabled: false}\n")
    statuses = []
    try:
        for i in range(24):     # send_limits.per_source: 20 per 15 minutes by default
            c = Client(f"http://127.0.0.1:{server.public_port}", {"X-Forwarded-For": f"2001:db8:7:7::{i + 1:x}"})
            try:
                status, _, _, _ = await c.send("POST", "/login", {"username": VICTIM.login,
                                                                 "password": VICTIM.password})
            finally:
                await c.close()
            statuses.append(status)
    finally:
        await server.stop(1)
    assert statuses[:20] == [200] * 20
    assert statuses[20:] == [429] * 4, f"24 holds from one /64: {statuses}"


# ==== Account lock-out as a denial of service =================================================================


async def test_the_shipped_rules_never_lock_an_owner_out(tmp_path: Path, legacy: int) -> None:
    """guard.yaml as shipped has no ``challenge:`` section; then a challenge is a 403.

    ``cs-account-many-ips`` (one account tried from more than 5 addresses in an hour)
    says "challenge, never lock out", so a few wrong passwords from a few addresses,
    which anyone who knows the username can send, must not refuse its owner.
    """
    clock = VirtualClock(1_800_000_000.0)
    server = await start_guard(tmp_path, legacy, shipped_rules_yaml() + "trusted_proxies: [127.0.0.1/32]\n",
                               clock=clock)
    base = f"http://127.0.0.1:{server.public_port}"
    owner_ip = "192.0.2.10"

    async def attempt(ip: str, password: str) -> int:
        c = Client(base, {"X-Forwarded-For": ip})
        try:
            status, _, _, _ = await c.send("POST", "/login", {"username": VICTIM.login, "password": password})
            return status
        finally:
            await c.close()

    try:
        assert await attempt(owner_ip, VICTIM.password) == 302           # the owner, at home, as usual
        clock.advance(3600)
        for i in range(6):                                               # anyone, from six addresses
            clock.advance(30)
            await attempt(f"198.18.{i}.7", f"guess-{i}")
        clock.advance(60)
        status = await attempt(owner_ip, VICTIM.password)
    finally:
        await server.stop(1)
    assert status == 302, f"the owner was refused ({status}) after six wrong passwords from strangers"


def lint(rules: str) -> list[str]:
    try:
        compile_documents([load_text(rules, "r.yaml")], CompileEnv())
    except SourceError as exc:
        return [str(p) for p in exc.problems]
    return []


@pytest.mark.parametrize(
    "when",
    [
        "{velocity: {key: username, metric: failures, window: 1h, over: 5}}",
        "{any: [{velocity: {key: username, metric: failures, window: 1h, over: 5}},"
        " {velocity: {key: ip, metric: failures, window: 1h, over: 50}}]}",
        "{login: true, any: [{velocity: {key: username, metric: attempts, window: 1h, over: 20}},"
        " {all: [{velocity: {key: subnet, metric: failures, window: 1h, over: 500}}, {method: POST}]}]}",
    ],
    ids=["plain", "any-of-username-or-ip", "nested"],
)
@pytest.mark.parametrize("action", ["block", "ban"])
def test_an_account_keyed_block_is_refused_whatever_its_shape(when: str, action: str) -> None:
    """When the username counter alone can make a rule match, the rule may only challenge."""
    text = f"rules:\n  - id: r\n    description: d\n    when: {when}\n    action: {action}\n"
    assert any("lock the owner out" in p for p in lint(text)), lint(text)


async def test_account_keyed_scores_cannot_add_up_to_a_block(tmp_path: Path) -> None:
    """``action: score`` on a per-account counter reaches ``scoring.block`` (100 by default): a lock-out too."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: account-failures\n    description: failed logins on one account\n"
        "    when: {velocity: {key: username, metric: failures, window: 1h, over: 3}}\n"
        "    action: score\n    score: 100\n"
    )
    config = load_config_text(
        f"upstream: http://127.0.0.1:9\nrules: ['{rules}']\nlogins: [{{id: login, path: /login}}]\n"
        f"attack: {{enabled: false}}\nstate_dir: '{tmp_path / 'state'}'\n", env={})
    try:
        engine = Engine(config, MemoryStore(), VirtualClock(), secret=b"k" * 32)
    except SourceError:
        return   # refused at load: as good
    await engine.start()
    try:
        for i in range(4):
            await login(engine, f"198.18.{i}.7", VICTIM.login, "wrong", 200)
        decision = await login(engine, "192.0.2.10", VICTIM.login, VICTIM.password, None)
    finally:
        await engine.close()
    assert decision.action not in (Action.BLOCK, Action.BAN), decision


async def login(engine: Engine, ip: str, user: str, password: str, status: int | None) -> Any:
    req = RequestFacts(
        client_ip=ip, method="POST", path="/login", headers={"User-Agent": BROWSER},
        login=engine.match_login("POST", "/login"), content_type="application/x-www-form-urlencoded",
        body=urlencode({"username": user, "password": password}).encode(),
    )
    decision = await engine.on_request(req)
    if decision.forwards:
        decision = await engine.on_login(req)
    if decision.forwards and status is not None:
        await engine.on_response(req, ResponseFacts(status, {}))
    return decision


# ==== Admin API exposure ==================================================================================

ADMIN_TOKEN = "admin-token-0123456789-abcdefghij"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (b"Bearer " + ADMIN_TOKEN.encode() + b"x", 403),
        (b"Bearer " + ADMIN_TOKEN[:-1].encode(), 403),
        (b"Bearer " + ADMIN_TOKEN.upper().encode(), 403),
        (b"Bearer x", 403),
        (b"Bearer " + b"y" * 4000, 403),
        (b"bearer " + ADMIN_TOKEN.encode() + b"0", 403),
        ("Bearer t\u00f6k\u00e9n-\u65e5\u672c".encode(), 403),        # UTF-8, not ASCII
        (b"Bearer \xff\xfe\x80token", 403),                            # not UTF-8 at all
        (b"Basic " + ADMIN_TOKEN.encode(), 401),
        (b"Bearer ", 401),
    ],
)
async def test_every_wrong_token_gets_the_same_refusal(
    authorization: bytes, status: int, upstream: Upstream, make_guard: GuardFactory
) -> None:
    """No token shape makes the admin API fail differently (a 500 and a traceback are an oracle too),
    and no answer echoes the configured token."""
    g = await make_guard(upstream.url, admin={"listen": "127.0.0.1:0", "token": ADMIN_TOKEN})
    request = (b"GET /api/bans HTTP/1.1\r\nHost: h\r\nAuthorization: " + authorization
               + b"\r\nConnection: close\r\n\r\n")
    resp = parse_response(await raw_exchange(g.server.admin_port, request))
    assert resp.status == status
    body = resp.body.decode("utf-8", "replace")
    assert ADMIN_TOKEN not in body and ADMIN_TOKEN[:8] not in body
    expected = '{"error": "wrong token"}' if status == 403 else '{"error": "bearer token required"}'
    assert body == expected


# ==== Header injection through the interstitial =============================================================


async def test_the_interstitial_reflects_nothing_from_the_request(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    """The page is built from the catalogue, the guard's numbers and the (escaped) brand only.

    Two logins carry the payload everywhere a client can put it: one whose login id a
    channel can reach (the code form) and one no channel can (the "could not send" page).
    """
    _box, smtp = mailbox
    server = await start_guard(tmp_path, legacy, write_rules(tmp_path, ALWAYS_2FA) + challenge_yaml(smtp))
    payload = '"><script>alert(7)</script>'
    browser = Client(f"http://127.0.0.1:{server.public_port}", {
        "Accept-Language": f"{payload}, ja", "User-Agent": f"x{payload}", "Referer": f"https://e/{payload}",
    })
    answers = []
    try:
        for username in ("o'neil+alert(7)@example.jp", f"{payload}@example.jp"):
            answers.append(await browser.send("POST", "/login?next=" + payload,
                                              {"username": username, "password": payload}))
    finally:
        await browser.close()
        await server.stop(1)
    assert [a[0] for a in answers] == [200, 503]
    assert "one-time-code" in answers[0][1] and "one-time-code" not in answers[1][1]
    for _status, page, set_cookies, headers in answers:
        assert "<script" not in page.lower() and "<img" not in page.lower()
        assert "alert(7)" not in page and "neil" not in page                     # not even escaped
        assert "&lt;script&gt;alert(1)&lt;/script&gt; call 0120" in page          # the brand, escaped
        assert headers["Content-Language"] == "ja"
        assert {k.lower() for k in headers} <= {
            "content-type", "content-language", "cache-control", "x-content-type-options", "x-frame-options",
            "referrer-policy", "content-security-policy", "vary", "set-cookie", "content-length", "date",
            "server",
        }
        assert all(c.startswith("lg-hold=") for c in set_cookies)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("restart_path", "/login\n"),
        ("restart_path", "/login\r\n"),
        ("path", "/.loginguard/challenge\n"),
        ("brand.name", "Shop\r\nBcc: all@evil.example"),
        ("restart_path", "//evil.example/"),
        ("restart_path", "/\\evil.example/"),
        ("restart_path", "https://evil.example/"),
    ],
)
def test_challenge_settings_that_reach_headers_or_mail_refuse_line_breaks(field: str, value: str) -> None:
    """``restart_path`` becomes a ``Location`` header, ``path`` the form's target, the brand name the
    subject of every code mail: a line break in any of them is a header injection waiting for a sink."""
    data: dict[str, Any] = {"keys": [KEY]}
    if "." in field:
        section, key = field.split(".")
        data[section] = {key: value}
    else:
        data[field] = value
    with pytest.raises(ValidationError):
        ChallengeSettings.model_validate(data)


def test_mail_headers_refuse_line_breaks() -> None:
    """The sender is checked by the settings; the recipient (a login id) must be a whole address."""
    with pytest.raises(ValidationError):
        EmailSettings(host="127.0.0.1", sender="guard@example.com\r\nBcc: all@evil.example")
    assert is_email("owner@example.jp")
    for login in ("owner@example.jp\n", "owner@example.jp\r\n", "a@b.example\nBcc: x@evil.example"):
        assert not is_email(login), repr(login)


def test_the_brand_name_never_reaches_a_header_raw() -> None:
    """The error pages' brand becomes the ``Server`` header: visible ASCII only."""
    pages = Pages(load_config_text("upstream: http://127.0.0.1:9\nbrand: {name: \"Shop\\r\\nX-Evil: 1\"}\n",
                                   env={}).brand)
    assert "\r" not in pages.server_name and "\n" not in pages.server_name
    assert pages.response(403).headers["Server"] == pages.server_name


# ==== Store compromise ===================================================================================


@pytest.mark.parametrize("secret_key", ["configured", "generated"])
async def test_a_redis_dump_holds_no_key_to_its_own_fingerprints(
    secret_key: str, tmp_path: Path, redis_url: str, upstream: Upstream, make_guard: GuardFactory
) -> None:
    """Whoever reads Redis must not find the key of the keyed hashes it stores next to them.

    With that key, every password fingerprint in the counters (``v:password:...``, kept for
    spraying detection, legitimate users' passwords included) can be checked against a
    dictionary offline at HMAC speed, every username hash against a list of e-mail
    addresses, and the ledger's sealed login ids opened: the keying that
    ``guard.engine.usernames`` promises would then protect nothing.
    """
    extra: dict[str, Any] = {"secret_key": "0123456789abcdef-configured"} if secret_key == "configured" else {}
    try:
        g = await make_guard(
            upstream.url, rules=(ROOT / "rules" / "30-password-spraying.yaml").read_text(),
            store={"backend": "redis", "url": redis_url}, logins=[{"id": "login", "path": "/login"}], **extra)
    except (ValidationError, SourceError, ValueError):
        assert secret_key == "generated"
        return    # refused: Redis without a configured secret_key is as good
    body = urlencode({"username": VICTIM.login, "password": "good"}).encode()
    request = (b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    assert parse_response(await raw_exchange(g.port, request)).status == 302
    secret = g.server.engine._secret
    dump = await redis_dump(redis_url)       # every key and every value, whatever its type
    assert any("v:password:" in text for text in dump), dump     # the fingerprints are there
    assert not [text for text in dump if secret.decode("latin-1") in text], (
        "Redis holds the HMAC key of the password fingerprints it stores")


# ==== Secrets and PII in the application log ===================================================================


async def test_app_log_lines_mask_addresses_in_paths_like_the_decision_log(
    upstream: Upstream, make_guard: GuardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Paths carry e-mail addresses (``/users/alice@example.jp``); the decision log masks them, and the
    guard's own log lines about the same request must too."""
    g = await make_guard(upstream.url)
    body = b"phone=pii_" + b"A" * 22 + b"&message=hi"
    request = (
        b"POST /users/owner@example.jp/contact HTTP/1.1\r\nHost: h\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nCookie: lgpii=" + b"B" * 22 + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with caplog.at_level("DEBUG", logger="guard"):
        resp = parse_response(await raw_exchange(g.port, request))
    assert resp.status == 200 and len(upstream.seen) == 1
    assert "owner@example.jp" not in g.stream.getvalue()           # the decision log: masked
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("guard")]
    assert lines, "the submission should have been logged (an unknown token was emptied)"
    assert not [line for line in lines if "owner@example.jp" in line], lines


@pytest.mark.parametrize(
    ("yaml", "secret"),
    [
        ("secret_key: short-but-real", "short-but-real"),                    # min 16 characters
        ("observe: {webhook: {url: 'hxxps://hooks.example/T0/B1/s3cr3tW3bh00k'}}", "s3cr3tW3bh00k"),
        ("store: {url: 'redis://:hunter2-pass@redis.internal:6379/0', timeout: nope}", "hunter2-pass"),
    ],
    ids=["secret_key", "attack-webhook-url", "redis-url"],
)
def test_config_errors_never_echo_a_secret(yaml: str, secret: str) -> None:
    """Config errors go to stderr, CI logs and journals: a refused secret is still a secret.

    (The challenge section already hides its inputs; ``store.url`` redacts its password.)
    """
    with pytest.raises(SourceError) as exc:
        load_config_text(f"upstream: http://127.0.0.1:9\n{yaml}\n", env={})
    text = "\n".join(str(p) for p in exc.value.problems)
    assert text and secret not in text, text


# ==== Bounded per-account state ==============================================================================


def test_account_history_is_bounded_whatever_an_attacker_rotates() -> None:
    """Per-account history (subnets, countries) is capped: logins from a thousand subnets keep 16."""
    from guard.geo import EMPTY
    from guard.rules.context import AccountHistory

    history = AccountHistory()
    for i in range(1000):
        history.record_success(float(i), f"10.{i // 256}.{i % 256}.0/24", EMPTY)
    assert len(history.subnets) == AccountHistory.MAX_SUBNETS
    assert "10.3.231.0/24" in history.subnets        # the newest are kept


# ==== The document itself ==================================================================================


def test_every_test_the_threat_model_cites_exists() -> None:
    """docs/security.md names ``file::test`` for each claim: each of them must exist, or the claim has no test."""
    doc = (ROOT / "docs" / "security.md").read_text()
    cited = sorted(set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc)))
    assert len(cited) > 100
    missing = [f"{file}::{name}" for file, name in cited
               if not (ROOT / file).is_file() or f"def {name}(" not in (ROOT / file).read_text()]
    assert not missing, missing
