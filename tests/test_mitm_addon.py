"""The mitmproxy addon, driven through mitmproxy's own test helpers and addon manager.

Flows come from ``mitmproxy.test.tflow``; hooks are invoked the way mitmproxy
invokes them (``addons.invoke_addon`` with the real hook classes), so async and
sync hooks are exercised as under ``mitmdump``.  The engine, the memory store
and the request log are real; the only socket is the admin listener's.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

from guard.engine import RequestFacts
from guard.mitm.addon import GuardAddon
from guard.store.base import StoreError

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


# ---- streaming and the HTML rewriting seam ----------------------------------------------------------


async def test_response_streaming_flags(guard: Guard) -> None:
    html = tutils.tresp(headers=http.Headers(content_type="text/html; charset=utf-8"))
    f = await guard.exchange(make_flow("/page"), html.copy())
    assert f.response is not None and f.response.stream is True  # no rewriter: HTML streams too

    seen: list[tuple[str, bytes]] = []

    async def rewrite(facts: RequestFacts, resp: http.Response) -> None:
        seen.append((facts.path, resp.content or b""))
        resp.content = b"rewritten"

    guard.addon.rewrite_html = rewrite
    f = await guard.exchange(make_flow("/page"), html.copy())
    assert f.response is not None and f.response.stream is False and f.response.content == b"rewritten"
    g = await guard.exchange(make_flow("/file.bin"), tutils.tresp())
    assert g.response is not None and g.response.stream is True  # not HTML: still streamed
    assert seen == [("/page", b"message")]


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
