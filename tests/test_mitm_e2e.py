"""The addon under a real ``mitmdump`` process, in front of a real aiohttp upstream.

What the hook-level tests cannot show: that mitmproxy loads the file as a
script, applies ``--set guard_config`` to the option the addon registers, runs
the async hooks, starts the admin listener on its own event loop, refuses to
start on a bad config, and shuts everything down on SIGTERM; and that a
browser-shaped client gets through the challenge (codes mailed by a real SMTP
server) into the legacy app's session, whose contact form comes back with its
PII tokenized and goes upstream with the values swapped back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import guard.mitm.addon
from guard.challenge.keys import new_key
from guard.pii.token import TOKEN_RE
from tests.challenge_fixtures import ALWAYS_2FA
from tests.test_challenge_channels import Mailbox
from tests.test_challenge_e2e import ALICE, code_in, form_fields, legacy, mailbox

__all__ = ["legacy", "mailbox"]  # fixtures: the legacy app (the incident's contact form) and a real SMTP server

pytestmark = pytest.mark.slow

MITMDUMP = Path(sys.executable).parent / "mitmdump"  # mitmproxy is a dependency: never skipped


def test_mitmdump_is_installed_with_the_guard() -> None:
    """The e2e tests below need it; a missing ``mitmdump`` is a broken install, said once and plainly."""
    assert MITMDUMP.exists(), f"{MITMDUMP} is missing: reinstall with pip install -e '.[test]'"
ADDON = guard.mitm.addon.__file__

TOKEN = "e2e-admin-token-0123456789"
RULES = """\
rules:
  - id: admin-path
    description: nobody gets /admin
    when: {path: {prefix: /admin}}
    action: block
  - id: login-burst
    description: more than 2 login attempts from one IP in a minute
    when:
      velocity: {key: ip, metric: attempts, window: 1m, over: 2}
    action: ban
    ban: {key: ip, duration: 10m}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[str]]]:
    """A legacy app: a page, and a login form that always says the password was wrong."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="hello", content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        await request.read()
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="<form>wrong password</form>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


def write_config(tmp: Path, admin: int, extra: str = "", rules: str = RULES) -> Path:
    (tmp / "rules.yaml").write_text(rules)
    path = tmp / "guard.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:9\n"
        f"admin: {{listen: '127.0.0.1:{admin}', token: {TOKEN}}}\n"
        "log: {file: access.log}\n"
        "logins:\n  - {id: login, path: /login}\n"
        "rules: [rules.yaml]\n"
        "attack: {enabled: false}\n" + extra
    )
    return path


def mitmdump(tmp: Path, up: int, port: int, config: Path, quiet: bool = True) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    cmd = [
        str(MITMDUMP), *(["-q"] if quiet else []), "--mode", f"reverse:http://127.0.0.1:{up}",
        "--listen-host", "127.0.0.1", "-p", str(port), "-s", ADDON,
        "--set", f"guard_config={config}", "--set", f"confdir={tmp / 'mitm'}",  # its CA files: not in ~
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """Poll, never block: the upstream runs on this test's event loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.05)
    return None


async def wait_ready(session: aiohttp.ClientSession, proc: subprocess.Popen[bytes], admin: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mitmdump exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the addon's admin listener never answered /readyz")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


async def test_mitmdump_with_the_addon(tmp_path: Path, upstream: tuple[int, list[str]]) -> None:
    up, seen = upstream
    port, admin = free_port(), free_port()
    proc = mitmdump(tmp_path, up, port, write_config(tmp_path, admin))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            await wait_ready(s, proc, admin)
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert await r.json() == {"status": "ok", "store": "up"}

            async with s.get(f"{base}/page") as r:
                assert r.status == 200 and await r.text() == "hello"

            # a path rule, answered by the guard's page; the upstream never sees the request
            async with s.get(f"{base}/admin/users") as r:
                assert r.status == 403 and r.headers["Server"] == "loginguard"
                assert "Access denied" in await r.text()
            async with s.get(f"{base}/admin", headers={"Accept": "application/json"}) as r:
                assert r.status == 403 and (await r.json())["error"] == "blocked"

            # repeated logins: two reach the upstream, the third earns a ban
            statuses = []
            for i in range(3):
                form = {"username": f"user{i}", "password": "hunter2"}
                async with s.post(f"{base}/login", data=form) as r:
                    statuses.append(r.status)
            assert statuses == [200, 200, 403]
            # banned now for every path, and a forged X-Forwarded-For does not launder the client
            async with s.get(f"{base}/page", headers={"X-Forwarded-For": "192.0.2.1"}) as r:
                assert r.status == 403

            assert seen == ["GET /page", "POST /login", "POST /login"]

            # the admin listener runs the same API as ``guard run``: metrics count what happened
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with s.get(f"http://127.0.0.1:{admin}/metrics", headers=auth) as r:
                assert r.status == 200
                metrics = await r.text()
            # blocked: two /admin paths and the banned client's page; banned: the third login
            assert 'guard_requests_total{action="block",status_class="4xx"} 3.0' in metrics
            assert 'guard_requests_total{action="ban",status_class="4xx"} 1.0' in metrics
            assert 'guard_login_attempts_total{endpoint="login",outcome="failure"} 2.0' in metrics

            # POST /api/reload reads guard_config again: a broken rule file is refused with its line
            (tmp_path / "rules.yaml").write_text(RULES.replace("over: 2", "over: lots"))
            async with s.post(f"http://127.0.0.1:{admin}/api/reload", headers=auth) as r:
                assert r.status == 422
                assert any("rules.yaml:9:" in p for p in (await r.json())["problems"])
            (tmp_path / "rules.yaml").write_text(RULES)
            async with s.post(f"http://127.0.0.1:{admin}/api/reload", headers=auth) as r:
                assert r.status == 200

        proc.send_signal(signal.SIGTERM)  # done(): the admin listener and the log close
        assert await wait_exit(proc, 10) is not None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", admin)) != 0
        logged = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()]
        lines = [x for x in logged if x["event"] == "decision"]  # ban events share the file
        assert [(x["path"], x["status"]) for x in lines] == [
            ("/page", 200), ("/admin/users", 403), ("/admin", 403),
            ("/login", 200), ("/login", 200), ("/login", 403), ("/page", 403),
        ]
        assert lines[5]["action"] == "ban" and lines[5]["reasons"][0]["rule"] == "login-burst"
        assert "hunter2" not in (tmp_path / "access.log").read_text()
    finally:
        stop(proc)


async def test_mitmdump_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = write_config(tmp_path, admin, "store: {backend: sqlite}\n")
    proc = mitmdump(tmp_path, 9, port, config, quiet=False)  # -q would hide the reason
    try:
        code = await wait_exit(proc, 20)
        assert code not in (None, 0)
        out = b"".join(s.read() for s in (proc.stdout, proc.stderr) if s is not None).decode()
        assert "guard.yaml:8:9: store.backend" in out, out
    finally:
        stop(proc)


CHALLENGE_RULES = ALWAYS_2FA


async def wait_mail(box: Mailbox, count: int, proc: subprocess.Popen[bytes]) -> None:
    """The code is mailed from mitmdump's process: poll the server's mailbox, never block the loop."""
    deadline = time.monotonic() + 15
    while len(box.messages) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("no code was mailed")
        await asyncio.sleep(0.05)


async def test_mitmdump_challenge_and_pii_in_front_of_the_legacy_app(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp = mailbox
    port, admin = free_port(), free_port()
    extra = (
        f"challenge:\n  keys: ['{new_key()}']\n  dispatch_delay: 0s\n  channels:\n"
        f"    email: {{host: 127.0.0.1, port: {smtp}, security: none, sender: guard@example.com, timeout: 5s}}\n"
    )
    proc = mitmdump(tmp_path, legacy, port, write_config(tmp_path, admin, extra, CHALLENGE_RULES))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            await wait_ready(s, proc, admin)
            # the right password: the interstitial, not the upstream's session
            login = {"username": ALICE.login, "password": ALICE.password}
            async with s.post(f"{base}/login", data=login, allow_redirects=False) as r:
                assert r.status == 200 and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                page = await r.text()
                assert "one-time-code" in page and "SID" not in r.headers.getall("Set-Cookie", [""])[0]
            await wait_mail(box, 1, proc)
            assert box.messages[0][0].rcpt_tos == [ALICE.login]

            # the code from the mailbox releases the upstream's answer: its redirect and session cookie
            form = {**form_fields(page), "code": code_in(box), "op": "verify"}
            async with s.post(f"{base}/.loginguard/challenge", data=form, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/contact"
                assert any(c.startswith("SID=") for c in r.headers.getall("Set-Cookie"))

            # the session works, and the contact form's hidden phone number comes back as a token
            async with s.get(f"{base}/contact", allow_redirects=False) as r:
                assert r.status == 200
                contact = await r.text()
                assert any(c.startswith("lgpii=") for c in r.headers.getall("Set-Cookie"))
            assert "Contact form" in contact and ALICE.phone not in contact and ALICE.user_id not in contact
            hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', contact))
            assert TOKEN_RE.fullmatch(hidden["phone"])

            # submitted as the browser would: the upstream gets the real values and recognises its user
            async with s.post(f"{base}/contact", data={**hidden, "message": "hello"}) as r:
                assert r.status == 200 and await r.json() == {"received": True, "identified": True}
    finally:
        stop(proc)
