"""``guard demo``: the incident's service behind the guard on your laptop, in one command.

It starts the bundled legacy support site (a login form, and a contact form that
embeds phone number, user id and e-mail in hidden fields), the guard in front of
it with the shipped rules and PII protection, and a demo "phone" (a webhook
receiver standing in for the user's messaging app) that shows the second-factor
codes the guard sends.  It prints the URLs and a sign-in you can use.  With
``--attack`` it replays a short credential-stuffing attack through the guard, so
the dashboard shows bans, challenges and stripped fields within a minute.

Everything listens on 127.0.0.1.  The demo uses the fake GeoIP databases from
``geoip/`` and a throw-away state folder; it is not a production configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import random
import secrets
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from guard.challenge.keys import new_key
from guard.config import Config, load_config_text
from guard.demo.legacyapp import Account, make_accounts, make_app
from guard.units import HostPort

ROOT = Path(__file__).resolve().parent.parent.parent
ACCOUNTS = 200


@dataclass(slots=True)
class Outbox:
    """The demo phone: codes and login notices the guard sent, newest first."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return web.Response(status=400)
        self.messages.insert(0, payload)
        del self.messages[50:]
        return web.json_response({"ok": True})

    async def page(self, request: web.Request) -> web.Response:
        rows = "".join(
            f"<li><b>{html.escape(str(m.get('event')))}</b> {html.escape(str(m.get('login', '')))}: "
            f"<code>{html.escape(str(m.get('code') or m.get('text') or ''))}</code></li>"
            for m in self.messages
        )
        body = (
            "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=2>"
            "<title>Demo phone</title><h1>Demo phone: codes sent by the guard</h1>"
            f"<ul>{rows or '<li>nothing yet: sign in through the guard</li>'}</ul>"
        )
        return web.Response(text=body, content_type="text/html")


def demo_config(
    app: HostPort, listen: HostPort, admin: HostPort, phone: str, token: str, state: Path
) -> Config:
    """The shipped rules and PII defaults, the demo's ports, a webhook 'phone' as the code channel."""
    geo = ROOT / "geoip"
    return load_config_text(
        f"""
listen: {listen}
upstream: http://{app}
admin: {{listen: '{admin}', token: '{token}'}}
trusted_proxies: [127.0.0.1/32]   # the --attack traffic plays clients behind a load balancer
logins: [{{id: login, path: /login}}]
rules: [{ROOT / 'rules'}, {ROOT / 'rules' / 'geo'}]
ip_lists:
  allowlist: {{file: {ROOT / 'rules' / 'lists' / 'allowlist.txt'}}}
  blocklist: {{file: {ROOT / 'rules' / 'lists' / 'blocklist.txt'}}}
geoip:
  city: {geo / 'test-City.mmdb'}
  asn: {geo / 'test-ASN.mmdb'}
  hosting_asns: {geo / 'hosting-asns.txt'}
honey_accounts: [admin, test]
state_dir: {state}
log: {{file: {state / 'decisions.log'}}}
challenge:
  keys: ['{new_key()}']
  dispatch_delay: 0s
  channels:
    order: [webhook]
    webhook: {{url: '{phone}', secret: '{secrets.token_hex(16)}', timeout: 3s}}
""",
        env={},
    )


async def _attack(base: str, accounts: dict[str, Account], say: Callable[[str], None], rounds: int) -> None:
    """A short credential-stuffing run: a botnet over many /24s, a fast attacker, some real users."""
    rnd = random.Random(2021)  # noqa: S311 (a reproducible demo, not a secret)
    logins = sorted(accounts)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def post(ip: str, user: str, password: str) -> int:
            async with http.post(f"{base}/login", data={"username": user, "password": password},
                                 headers={"X-Forwarded-For": ip}, allow_redirects=False) as r:
                await r.read()
                return r.status

        # a few real users first: their home subnets become known
        for i in range(20):
            acct = accounts[logins[i]]
            await post(f"10.1.{i}.10", acct.login, acct.password)
        say("  20 regular users signed in from home")
        statuses: dict[int, int] = {}
        for n in range(rounds):
            login = rnd.choice(logins)
            pw = accounts[login].password if rnd.random() < 0.33 else f"leaked-{rnd.randrange(10**6)}"
            ip = f"10.{rnd.choice([1, 2, 2, 3])}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            s = await post(ip, login, pw)
            statuses[s] = statuses.get(s, 0) + 1
            if n % 50 == 0:
                await asyncio.sleep(0.05)
        say(f"  botnet: {rounds} attempts from many /24s: answers {dict(sorted(statuses.items()))}")
        statuses = {}
        for n in range(60):
            login = rnd.choice(logins)
            s = await post(f"203.0.113.{130 + n % 3}", login, accounts[login].password)
            statuses[s] = statuses.get(s, 0) + 1
        say(f"  fast attacker: 60 attempts from 3 IPs: answers {dict(sorted(statuses.items()))}")
        await post("10.4.9.9", "admin", "admin")
        say("  someone tried the decoy account 'admin': banned")


async def demo(
    app_addr: HostPort, listen: HostPort, admin: HostPort, attack: bool, duration: float | None,
    say: Callable[[str], None] = print,
) -> int:
    from guard.http.server import GuardServer

    accounts = make_accounts(ACCOUNTS)
    outbox = Outbox()
    legacy = make_app(accounts)
    legacy.router.add_post("/.demo/phone", outbox.receive)
    legacy.router.add_get("/.demo/phone", outbox.page)
    runner = web.AppRunner(legacy, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, app_addr.host, app_addr.port).start()
    app_port = runner.addresses[0][1]
    app_addr = HostPort(app_addr.host, app_port)
    token = secrets.token_urlsafe(18)
    state = Path(tempfile.mkdtemp(prefix="guard-demo-"))
    config = demo_config(app_addr, listen, admin, f"http://{app_addr}/.demo/phone", token, state)
    server = GuardServer(config)
    try:
        await server.start()
    except OSError as exc:
        await runner.cleanup()
        say(f"guard demo: cannot listen: {exc} (use --listen/--admin/--app to pick free ports)")
        return 2
    base = f"http://{listen.host}:{server.public_port}"
    dash = f"http://{admin.host}:{server.admin_port}/dashboard"
    alice = accounts["user1@example.jp"]
    say("loginguard demo")
    say(f"  the legacy support site, through the guard:  {base}/login")
    say(f"      sign in as {alice.login} / {alice.password}, then open {base}/contact")
    say("      and view the page source: phone, user id and e-mail are tokens, not values")
    say(f"  the demo phone (codes the guard sends):      http://{app_addr}/.demo/phone")
    say(f"  the block dashboard:                         {dash}")
    say(f"      admin token: {token}")
    say("  the site itself, unprotected:                " + f"http://{app_addr}/login")
    say(f"  the decision log:                            {state / 'decisions.log'}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if attack:
            say("replaying a short credential-stuffing attack through the guard ...")
            await _attack(base, accounts, say, rounds=400)
            say(f"done: see {dash}")
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        else:
            say("Ctrl-C stops the demo.")
            await stop.wait()
    finally:
        await server.stop(1)
        await runner.cleanup()
    return 0
