"""The security review's headline test: planted secrets never leave the places they belong.

The attack simulation (``guard.demo.simulate``: legitimate users, a botnet and a
fast attacker replaying a combo list) runs at a small scale against the legacy
app, behind a guard configured like production: shipped rule packs, GeoIP, a
decision-log *file*, the exposure ledger, the second factor over a real SMTP
server, PII tokenization, the admin API.  Every password is a planted secret
(``Planted-Secret-Pw-<n>``, plus the combo list's leaked passwords), and so is
every account's phone number, internal user id and e-mail address.  Some
challenged users complete their code, some signed-in users open and submit the
contact form with its PII, so every code path that handles those values runs.

Then everything the guard wrote or can be asked for is searched:

- the decision-log files (live and rotated),
- every log record of the process (formatted as the guard formats them,
  ``extra`` fields included) and whatever reached stderr/stdout,
- the admin ``/metrics`` text (labels and values) and the JSON of the admin API,
- the exposure ledger, and ``guard report attack``,
- every key and value of the store (the memory store's dicts, or Redis read
  key by key with SCAN and a read per type),
- the mails the guard sent (a code, never a password or PII),

and none of them may hold a password, a phone number, a user id or a username
in clear.  ``guard report exposed`` is the one place a login id may appear, and
only with the key: it must list exposed login ids when the key is available,
no login id at all without it, and never a password or other PII.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guard import reportcli
from guard.challenge.keys import new_key
from guard.config import Config, load_config
from guard.demo.legacyapp import Account, make_accounts, make_app
from guard.demo.simulate import BROWSER_UA, START, Event, Scenario, events
from guard.engine import VirtualClock
from guard.http.server import GuardServer
from guard.logsetup import JsonFormatter
from guard.store.memory import MemoryStore
from tests.challenge_fixtures import mailbox
from tests.test_challenge_channels import Mailbox

__all__ = ["mailbox"]  # a fixture: a real SMTP relay

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "planted-admin-token-0123456789abcdef"
CHALLENGE_KEY = new_key()
FINGERPRINT_KEY = "planted-fingerprint-key-0123456789"   # Redis needs a configured secret_key
SCENARIO = Scenario(seed=8).scaled(0.1)
PII_USERS = 6          # signed-in users who open and submit the contact form
CODE_USERS = 3         # challenged legitimate users who type their code


def planted_accounts() -> dict[str, Account]:
    """The demo population, every password replaced by a planted secret."""
    base = make_accounts(SCENARIO.accounts)
    return {
        login: dataclasses.replace(acct, password=f"Planted-Secret-Pw-{i:04d}")
        for i, (login, acct) in enumerate(sorted(base.items()))
    }


# ---- the guard and its surroundings ------------------------------------------------------------------


def guard_yaml(tmp: Path, upstream: int, smtp: int, redis_url: str | None) -> str:
    geo = ROOT / "geoip"
    store = (f"store: {{backend: redis, url: '{redis_url}'}}\nsecret_key: {FINGERPRINT_KEY}\n"
             if redis_url else "")
    return f"""
listen: 127.0.0.1:0
upstream: http://127.0.0.1:{upstream}
admin: {{listen: '127.0.0.1:0', token: '{ADMIN_TOKEN}'}}
trusted_proxies: [127.0.0.1/32]
logins: [{{id: login, path: /login}}]
rules: ['{ROOT / 'rules'}', '{ROOT / 'rules' / 'geo'}']
ip_lists:
  allowlist: {{file: '{ROOT / 'rules' / 'lists' / 'allowlist.txt'}'}}
  blocklist: {{file: '{ROOT / 'rules' / 'lists' / 'blocklist.txt'}'}}
geoip:
  city: '{geo / 'test-City.mmdb'}'
  asn: '{geo / 'test-ASN.mmdb'}'
  hosting_asns: '{geo / 'hosting-asns.txt'}'
honey_accounts: [admin@example.jp]
state_dir: '{tmp / 'state'}'
observe:
  decision_log: {{path: '{tmp / 'logs' / 'decisions.log'}', max_bytes: 200KiB, backups: 50}}
challenge:
  keys: ['{CHALLENGE_KEY}']
  dispatch_delay: 0s
  channels:
    email: {{host: 127.0.0.1, port: {smtp}, security: none, sender: guard@example.com, timeout: 5s}}
{store}"""


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[int, dict[str, Account], web.Application]]:
    accounts = planted_accounts()
    app = make_app(accounts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], accounts, app
    await runner.cleanup()


class Records(logging.Handler):
    """Every log record of the process, formatted the way ``guard run`` prints it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mail.log"):   # the test's SMTP server, not the guard
            return
        self.lines.append(self.format(record))


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root, guard = logging.getLogger(), logging.getLogger("guard")
    old = root.level, guard.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    guard.setLevel(logging.DEBUG)   # `guard test` run in-process (an earlier test) leaves it at ERROR
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old[0])
        guard.setLevel(old[1])


# ---- driving the simulation --------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    sessions: dict[str, str] = dataclasses.field(default_factory=dict)   # login -> upstream SID
    challenged: int = 0          # legitimate users shown the interstitial
    passed: int = 0              # ... who then typed the mailed code and got their login released
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)


async def replay(base: str, clock: VirtualClock, evs: list[Event], guard: GuardServer, box: Mailbox,
                 accounts: dict[str, Account]) -> Run:
    """The simulator's loop, plus what real users do next: type the code, keep their session."""
    run = Run()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        for n, ev in enumerate(evs):
            clock.set(START + ev.t)
            if n % 200 == 0:
                await guard.engine.bans.refresh()
            headers = {"X-Forwarded-For": ev.ip, "User-Agent": ev.ua or BROWSER_UA}
            async with http.post(
                base + "/login", data={"username": ev.login, "password": ev.password}, allow_redirects=False,
                headers=headers,
            ) as resp:
                page = await resp.text()
                run.statuses[resp.status] = run.statuses.get(resp.status, 0) + 1
                cookies = resp.cookies
            if ev.who != "legit":
                continue
            if resp.status == 302 and "SID" in cookies:
                run.sessions[ev.login] = cookies["SID"].value
            elif "one-time-code" in page and "lg-hold" in cookies:
                run.challenged += 1
                if run.passed < CODE_USERS and ev.password == accounts[ev.login].password:
                    sid = await answer_code(http, base, headers, page, cookies["lg-hold"].value, ev, box, guard)
                    if sid is not None:
                        run.passed += 1
                        run.sessions[ev.login] = sid
    return run


async def answer_code(http: aiohttp.ClientSession, base: str, headers: dict[str, str], page: str,
                      binding: str, ev: Event, box: Mailbox, guard: GuardServer) -> str | None:
    """A challenged user types the code mailed to them: the held login (its session cookie) is released."""
    await guard._challenges.drain()  # codes go out in background tasks
    mails = [m for env, m in box.messages if env.rcpt_tos == [ev.login]]
    if not mails:
        return None
    body = mails[-1].get_body(preferencelist=("plain",))
    assert body is not None
    code = re.search(r"\b(\d{6,10})\b", body.get_content())
    assert code is not None
    fields = dict(re.findall(r'name="(hold|csrf)" value="([^"]+)"', page))
    async with http.post(
        base + "/.loginguard/challenge", data={**fields, "code": code.group(1), "op": "verify"},
        headers={**headers, "Cookie": f"lg-hold={binding}"}, allow_redirects=False,
    ) as resp:
        await resp.read()
        return resp.cookies["SID"].value if resp.status == 302 and "SID" in resp.cookies else None


async def contact_forms(base: str, run: Run, accounts: dict[str, Account], app: web.Application) -> int:
    """Signed-in users open the contact form (PII rewritten) and send it (tokens swapped back)."""
    from guard.demo.legacyapp import RECEIVED

    identified = 0
    for login, sid in list(run.sessions.items())[:PII_USERS]:
        acct = accounts[login]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            http.cookie_jar.update_cookies({"SID": sid})
            async with http.get(base + "/contact", headers={"User-Agent": BROWSER_UA}) as resp:
                page = await resp.text()
            assert resp.status == 200 and "Contact form" in page
            # the page the browser gets carries no phone and no user id, only tokens
            assert acct.phone not in page and acct.user_id not in page
            hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
            assert set(hidden) == {"phone", "mid", "email"}
            before = len(app[RECEIVED])
            async with http.post(base + "/contact", data={**hidden, "message": "please call me"},
                                 headers={"User-Agent": BROWSER_UA}) as resp:
                answer = await resp.json()
            assert resp.status == 200 and len(app[RECEIVED]) == before + 1
            identified += bool(answer["identified"])
    return identified


async def admin_texts(port: int) -> dict[str, str]:
    """``/metrics`` and the admin API's JSON, with the token."""
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    out: dict[str, str] = {}
    paths = ["/metrics", "/api/decisions?limit=1000", "/api/summary", "/api/exposures", "/api/bans",
             "/api/rules", "/api/health", *(f"/api/top?by={d}&limit=500" for d in ("ip", "username", "asn"))]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(base + path, headers=auth) as resp:
                assert resp.status == 200, path
                out[path] = await resp.text()
    return out


# ---- reading everything back -----------------------------------------------------------------------------


def memory_dump(store: MemoryStore) -> list[str]:
    """Every key, value and distinct-set member the memory store holds, and its ban table."""
    out: list[str] = []
    for part in store._parts:  # the point is to look inside
        for key in part._place:
            out.append(key)
            value = part._values.get(key)
            if isinstance(value, bytes | bytearray):
                out.append(bytes(value).decode("utf-8", "replace"))
                out.append(bytes(value).decode("latin-1"))
            elif value is not None:
                out.append(str(value))
        out.extend(part._seen_at)                  # "<set id>:<member>"
        logs = list(part._seen_log.values()) + [log for _, log in part._graves]
        for log in logs:                           # the members' records, raw
            out.append(bytes(log).decode("utf-8", "replace"))
            out.append(bytes(log).decode("latin-1"))
    for subject, reason in store._ban_reason.items():
        out.extend([subject, reason])
    return out


async def redis_dump(url: str) -> list[str]:
    """Every key of the database (SCAN) and its whole value, read with the command for its type."""
    from redis.asyncio import Redis

    r: Any = Redis.from_url(url)   # redis-py types its replies loosely
    out: list[str] = []
    try:
        async for raw_key in r.scan_iter(count=1000):
            key = raw_key.decode("utf-8", "replace")
            kind = (await r.type(raw_key)).decode()
            values: list[Any]
            if kind == "string":
                values = [await r.get(raw_key)]
            elif kind == "hash":
                values = [x for kv in (await r.hgetall(raw_key)).items() for x in kv]
            elif kind == "zset":
                values = [m for m, _ in await r.zrange(raw_key, 0, -1, withscores=True)]
            elif kind == "set":
                values = list(await r.smembers(raw_key))
            elif kind == "list":
                values = await r.lrange(raw_key, 0, -1)
            elif kind == "stream":
                values = [x for _id, fields in await r.xrange(raw_key) for kv in fields.items() for x in kv]
            else:
                raise AssertionError(f"unexpected Redis type {kind} for {key}")
            out.append(key)
            for v in values:
                if isinstance(v, bytes):
                    out.append(v.decode("utf-8", "replace"))
                    out.append(v.decode("latin-1"))
                elif v is not None:
                    out.append(str(v))
    finally:
        await r.aclose()
    return out


def files_text(paths: Iterable[Path]) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in paths if p.is_file())


def leaks(where: str, texts: Iterable[str], secrets: dict[str, set[str]]) -> list[str]:
    """``where: kind: value`` for every planted value found in ``texts``."""
    found: list[str] = []
    blob = "\n".join(texts)
    lowered = blob.lower()
    for kind, values in secrets.items():
        for value in values:
            if value.lower() in lowered:
                found.append(f"{where}: {kind}: {value}")
    return found


async def report(config_file: Path, command: str, fmt: str, capfd: pytest.CaptureFixture[str]) -> str:
    """``guard report`` as the CLI runs it (it runs its own event loop, so in a thread)."""
    args = argparse.Namespace(config=str(config_file), report_command=command, since=None, until=None,
                              format=fmt, countries=10, log=None)
    capfd.readouterr()
    assert await asyncio.to_thread(reportcli.main, args) == 0
    return capfd.readouterr().out


# ---- the test ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_planted_secrets_appear_nowhere(
    backend: str, tmp_path: Path, legacy: tuple[int, dict[str, Account], web.Application],
    mailbox: tuple[Mailbox, int], records: Records, capfd: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
) -> None:
    upstream, accounts, app = legacy
    box, smtp = mailbox
    redis_url: str | None = request.getfixturevalue("redis_url") if backend == "redis" else None
    config_file = tmp_path / "guard.yaml"
    config_file.write_text(guard_yaml(tmp_path, upstream, smtp, redis_url))
    config: Config = load_config(config_file, env={})
    store = MemoryStore(max_keys=config.store.max_keys, max_members=config.store.max_members) \
        if backend == "memory" else None
    clock = VirtualClock(START)
    guard = GuardServer(config, store=store, clock=clock)
    await guard.start()
    evs = events(SCENARIO, accounts)
    base = f"http://127.0.0.1:{guard.public_port}"
    try:
        run = await replay(base, clock, evs, guard, box, accounts)
        identified = await contact_forms(base, run, accounts, app)
        admin = await admin_texts(guard.admin_port)
        dump = memory_dump(store) if store is not None else []
    finally:
        await guard.stop(1)
    if redis_url is not None:
        dump = await redis_dump(redis_url)
    assert len(dump) > 100, "the store should have been busy"

    # the run did what it is meant to exercise
    assert run.statuses.get(302, 0) > 100 and run.statuses.get(403, 0) > 0
    assert run.challenged > 0 and run.passed > 0, "no challenged user completed a code"
    assert identified == min(PII_USERS, len(run.sessions)) > 0, "PII tokens did not swap back"
    assert len(box.messages) > 0

    secrets: dict[str, set[str]] = {
        "password": {ev.password for ev in evs},
        "phone": {a.phone for a in accounts.values()},
        "user id": {a.user_id for a in accounts.values()},
        "username": {ev.login for ev in evs} | set(accounts),
        "challenge key": {CHALLENGE_KEY},
        "fingerprint key": {FINGERPRINT_KEY},
    }
    no_login = {k: v for k, v in secrets.items() if k != "username"}
    found: list[str] = []

    log_files = sorted((tmp_path / "logs").glob("decisions.log*"))
    decision_log = files_text(p for p in log_files if not p.name.endswith(".lock"))
    assert decision_log.count('"event":"decision"') >= len(evs)
    found += leaks("decision log", [decision_log], secrets)

    out, err = capfd.readouterr()
    found += leaks("process logs", [*records.lines, out, err], secrets)
    assert any('"logger": "guard' in line for line in records.lines), "no guard log record was captured"

    assert "guard_requests_total" in admin["/metrics"] and "guard_exposures_total" in admin["/metrics"]
    found += leaks("admin API", [f"{path}\n{text}" for path, text in admin.items()],
                   {**secrets, "admin token": {ADMIN_TOKEN}})

    found += leaks("store", dump, secrets)

    ledger_file = config.state_dir / "exposure-ledger.jsonl"
    if backend == "memory":
        assert ledger_file.is_file()
        found += leaks("ledger", [ledger_file.read_text()], secrets)

    mails = [m.as_string() for _env, m in box.messages]
    found += leaks("mail", mails, no_login)

    # guard report: login ids only with the key, never a password or PII
    exposed_json = json.loads(await report(config_file, "exposed", "json", capfd))
    exposed = exposed_json["accounts"]
    assert len(exposed) > 0, "the attack should have exposed accounts"
    logins = {a["login"] for a in exposed}
    assert None not in logins and logins <= set(accounts) | {ev.login for ev in evs}
    for fmt in ("table", "csv", "json"):
        text = await report(config_file, "exposed", fmt, capfd)
        found += leaks(f"report exposed {fmt}", [text], no_login)
        assert all(login in text for login in logins)
    found += leaks("report attack", [await report(config_file, "attack", "json", capfd),
                                     await report(config_file, "attack", "table", capfd)], secrets)

    # without the key (the ledger copied where the guard's secret is not), no login id at all
    if backend == "memory":
        keyless = tmp_path / "keyless"
        (keyless / "state").mkdir(parents=True)
        shutil.copy(ledger_file, keyless / "state" / ledger_file.name)
        keyless_file = keyless / "guard.yaml"
        keyless_file.write_text(config_file.read_text().replace(str(tmp_path / "state"), str(keyless / "state")))
        for fmt in ("table", "csv", "json"):
            text = await report(keyless_file, "exposed", fmt, capfd)
            assert f"Exposed accounts: {len(exposed)}" in text if fmt == "table" else True
            found += leaks(f"keyless report {fmt}", [text], secrets)
    else:
        args = argparse.Namespace(report_command="exposed", since=None, until=None, format="json", countries=10)
        text = await asyncio.to_thread(reportcli.run, args, config, None)
        assert len(json.loads(text)["accounts"]) == len(exposed)
        found += leaks("keyless report", [text], secrets)

    assert not found, "\n".join(sorted(found)[:50])


def test_the_leak_detector_finds_what_it_looks_for() -> None:
    """The search itself is sound: case-insensitive, in any of the texts, and reported by kind."""
    secrets = {"password": {"Planted-Secret-Pw-0001"}, "username": {"user1@example.jp"}}
    text = io.StringIO()
    text.write('{"msg": "login of USER1@example.jp with planted-secret-pw-0001"}')
    assert leaks("x", ["nothing", text.getvalue()], secrets) == [
        "x: password: Planted-Secret-Pw-0001", "x: username: user1@example.jp"]
    assert leaks("x", ["Planted-Secret-Pw-000"], secrets) == []
