"""The attack simulator: the incident replayed against a legacy app behind the guard.

Everything goes over real HTTP: a legacy login app (``legacyapp``) with a few
thousand accounts, the guard in front of it with the shipped rule packs, and a
client that sends every login through ``X-Forwarded-For`` from a trusted hop,
geolocated with the test MaxMind databases.  Only the guard's clock is virtual,
so two days of traffic run in well under a minute and the result is the same on
every run (one seed).

The population, modelled on the incident and on ordinary users:

- legitimate users log in from stable home IPs (Japanese residential and mobile
  blocks) a couple of times a day; some mistype their password first; a few
  travel (Taiwan, Thailand, the US) on the second day;
- a botnet of hundreds of IPs spread over many /24s, mostly in Japan, works
  through a combo list in which about a third of the pairs are valid, each IP
  low and slow;
- a fast attacker hammers from a few hosting IPs.

It prints how many valid pairs the attackers saw succeed (the upstream's answer
reached them), and how legitimate logins fared: succeeded, challenged, blocked.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from guard.config import load_config_text
from guard.demo.legacyapp import Account, make_accounts, make_app
from guard.engine import VirtualClock

ROOT = Path(__file__).resolve().parent.parent.parent
DAY = 86400.0
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)
START = 1_767_225_600.0  # 2026-01-01T00:00Z


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    who: str            # "legit", "botnet", "fast"
    ip: str
    login: str
    password: str
    session: int        # legit: one login session (typo + retry share it); attacks: -1
    valid: bool = False  # attacks: the pair is valid
    ua: str = ""


@dataclass(slots=True)
class Scenario:
    accounts: int = 3000
    active_users: int = 2000
    logins_per_day: float = 2.0
    typo_rate: float = 0.05
    travel_rate: float = 0.03
    combo_pairs: int = 3000
    valid_fraction: float = 1 / 3
    botnet_ips: int = 400
    botnet_subnets: int = 200
    attack_start: float = DAY + 2 * 3600
    attack_hours: float = 4.0
    fast_ips: int = 3
    fast_attempts: int = 300
    fast_start: float = DAY + 10 * 3600
    days: float = 2.0
    seed: int = 2021

    def scaled(self, factor: float) -> Scenario:
        s = Scenario(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        s.accounts = max(300, int(self.accounts * factor))
        s.active_users = max(200, int(self.active_users * factor))
        s.combo_pairs = max(300, int(self.combo_pairs * factor))
        s.botnet_ips = max(40, int(self.botnet_ips * factor))
        s.botnet_subnets = max(20, int(self.botnet_subnets * factor))
        s.fast_attempts = max(60, int(self.fast_attempts * factor))
        return s


def _home_ip(rnd: random.Random, i: int) -> str:
    if i % 10 == 9:  # a tenth on mobile
        return f"100.64.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    return f"10.1.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"


def _travel_ip(rnd: random.Random) -> str:
    block = rnd.choice(["10.3", "10.4", "10.5"])  # TW, TH, US (New York)
    second = rnd.randrange(128) if block == "10.5" else rnd.randrange(256)
    return f"{block}.{second}.{rnd.randrange(1, 255)}"


def events(sc: Scenario, accounts: dict[str, Account]) -> list[Event]:
    rnd = random.Random(sc.seed)  # noqa: S311 (a reproducible simulation, not a secret)
    logins = sorted(accounts)
    out: list[Event] = []
    session = 0
    users = logins[: sc.active_users]
    travellers = set(rnd.sample(users, int(len(users) * sc.travel_rate)))
    for i, login in enumerate(users):
        acct = accounts[login]
        home = _home_ip(rnd, i)
        away = _travel_ip(rnd)
        n = max(1, round(sc.days * sc.logins_per_day * rnd.uniform(0.5, 1.5)))
        for _ in range(n):
            t = rnd.uniform(0, sc.days * DAY - 120)
            ip = away if login in travellers and t > DAY else home
            session += 1
            if rnd.random() < sc.typo_rate:
                out.append(Event(t, "legit", ip, login, acct.password + "x", session))
                t += rnd.uniform(5, 40)
            out.append(Event(t, "legit", ip, login, acct.password, session))
    # the combo list: a third valid pairs, the rest leaked pairs that no longer work or never did
    combo: list[tuple[str, str, bool]] = []
    valid_targets = rnd.sample(logins, int(sc.combo_pairs * sc.valid_fraction))
    combo.extend((lg, accounts[lg].password, True) for lg in valid_targets)
    while len(combo) < sc.combo_pairs:
        if rnd.random() < 0.5:
            combo.append((rnd.choice(logins), f"leaked-{rnd.randrange(10**9)}", False))
        else:
            nobody = f"nobody{rnd.randrange(10**7)}@example.jp"
            combo.append((nobody, f"leaked-{rnd.randrange(10**9)}", False))
    rnd.shuffle(combo)
    # the botnet: mostly Japanese /24s (residential proxies and a hosting range), a few abroad
    subnets = []
    for k in range(sc.botnet_subnets):
        r = rnd.random()
        if r < 0.6:
            subnets.append(f"10.1.{rnd.randrange(256)}")
        elif r < 0.85:
            subnets.append(f"10.2.{rnd.randrange(256)}")
        else:
            subnets.append(f"{rnd.choice(['10.3', '10.4', '10.6'])}.{rnd.randrange(256)}")
        del k
    bots = [f"{rnd.choice(subnets)}.{rnd.randrange(1, 255)}" for _ in range(sc.botnet_ips)]
    span = sc.attack_hours * 3600
    fast_share = sc.fast_attempts
    botnet_pairs = combo[: max(0, len(combo) - fast_share)]
    fast_pairs = combo[len(botnet_pairs):]
    for j, (login, pw, valid) in enumerate(botnet_pairs):
        t = sc.attack_start + span * (j + rnd.random()) / max(1, len(botnet_pairs))
        out.append(Event(t, "botnet", bots[j % len(bots)], login, pw, -1, valid))
    fast = [f"203.0.113.{130 + k}" for k in range(sc.fast_ips)]
    for j, (login, pw, valid) in enumerate(fast_pairs):
        t = sc.fast_start + 600 * j / max(1, len(fast_pairs))
        out.append(Event(t, "fast", fast[j % len(fast)], login, pw, -1, valid,
                         ua="python-requests/2.31.0" if j % 2 else BROWSER_UA))
    out.sort(key=lambda e: e.t)
    return out


@dataclass(slots=True)
class Tally:
    valid_tried: dict[str, int] = field(default_factory=lambda: {"botnet": 0, "fast": 0})
    valid_seen: dict[str, int] = field(default_factory=lambda: {"botnet": 0, "fast": 0})
    attempts: dict[str, int] = field(default_factory=lambda: {"botnet": 0, "fast": 0})
    # session -> what happened to it: {"success", "challenge", "block"}
    sessions: dict[int, set[str]] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        n = len(self.sessions)
        # a challenged legitimate user passes the second factor: they own the account
        got_in = sum(1 for s in self.sessions.values() if "success" in s or "challenge" in s)
        challenged = sum(1 for s in self.sessions.values() if "challenge" in s)
        blocked = sum(1 for s in self.sessions.values() if "block" in s)
        tried = sum(self.valid_tried.values())
        seen = sum(self.valid_seen.values())
        return {
            "legit_sessions": n,
            "legit_succeeded_pct": round(100 * got_in / n, 2) if n else 0.0,
            "legit_challenged_pct": round(100 * challenged / n, 2) if n else 0.0,
            "legit_blocked": blocked,
            "attack_attempts": dict(self.attempts),
            "valid_pairs_tried": dict(self.valid_tried),
            "valid_pairs_seen": dict(self.valid_seen),
            "attacker_success_pct": round(100 * seen / tried, 2) if tried else 0.0,
            "actions": dict(sorted(self.actions.items())),
        }


def sim_config(upstream: str, log_file: Path) -> str:
    geo = ROOT / "geoip"
    return f"""
listen: 127.0.0.1:0
upstream: {upstream}
admin: {{listen: 127.0.0.1:0}}
trusted_proxies: [127.0.0.1/32]
logins:
  - {{id: login, path: /login}}
rules: [{ROOT / 'rules'}, {ROOT / 'rules' / 'geo'}]
ip_lists:
  allowlist: {{file: {ROOT / 'rules' / 'lists' / 'allowlist.txt'}}}
  blocklist: {{file: {ROOT / 'rules' / 'lists' / 'blocklist.txt'}}}
geoip:
  city: {geo / 'test-City.mmdb'}
  asn: {geo / 'test-ASN.mmdb'}
  hosting_asns: {geo / 'hosting-asns.txt'}
state_dir: {log_file.parent / 'state'}
"""


async def run(sc: Scenario, progress: bool = False) -> dict[str, Any]:
    from guard.http.server import GuardServer

    accounts = make_accounts(sc.accounts)
    app_runner = web.AppRunner(make_app(accounts), access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    port = app_runner.addresses[0][1]
    tmp = Path(tempfile.mkdtemp(prefix="guard-sim-"))
    config = load_config_text(sim_config(f"http://127.0.0.1:{port}", tmp / "decisions.log"), env={})
    clock = VirtualClock(START)
    stream = io.StringIO()
    guard = GuardServer(config, clock=clock, log_stream=stream)
    await guard.start()
    tally = Tally()
    evs = events(sc, accounts)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            url = f"http://127.0.0.1:{guard.public_port}/login"
            for n, ev in enumerate(evs):
                clock.set(START + ev.t)
                if n % 500 == 0:
                    await guard.engine.bans.refresh()
                    if progress:
                        print(f"  {n}/{len(evs)} events", flush=True)
                mark = stream.tell()
                async with http.post(
                    url, data={"username": ev.login, "password": ev.password}, allow_redirects=False,
                    headers={"X-Forwarded-For": ev.ip, "User-Agent": ev.ua or BROWSER_UA},
                ) as resp:
                    await resp.read()
                    status = resp.status
                action = _last_action(stream, mark)
                tally.actions[action] = tally.actions.get(action, 0) + 1
                _count(tally, ev, status, action)
    finally:
        await guard.stop(1)
        await app_runner.cleanup()
    return tally.summary()


def _last_action(stream: io.StringIO, mark: int) -> str:
    stream.seek(mark)
    lines = [ln for ln in stream.read().splitlines() if ln.strip()]
    stream.seek(0, io.SEEK_END)
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "action" in entry:
            return str(entry["action"])
    return "unknown"


def _count(t: Tally, ev: Event, status: int, action: str) -> None:
    if ev.who == "legit":
        s = t.sessions.setdefault(ev.session, set())
        if status == 302:
            s.add("success")
        if action == "challenge":
            s.add("challenge")
        elif action in ("block", "ban"):
            s.add("block")
        return
    t.attempts[ev.who] += 1
    if ev.valid:
        t.valid_tried[ev.who] += 1
        if status == 302:  # the upstream's success reached the attacker
            t.valid_seen[ev.who] += 1


def check(summary: dict[str, Any]) -> list[tuple[str, bool, str]]:
    return [
        ("attacker sees success for <= 1% of the valid pairs it tries",
         summary["attacker_success_pct"] <= 1.0, f"{summary['attacker_success_pct']}%"),
        (">= 99% of legitimate users get in", summary["legit_succeeded_pct"] >= 99.0,
         f"{summary['legit_succeeded_pct']}%"),
        ("<= 5% of legitimate users are challenged", summary["legit_challenged_pct"] <= 5.0,
         f"{summary['legit_challenged_pct']}%"),
        ("no legitimate user is blocked", summary["legit_blocked"] == 0, str(summary["legit_blocked"])),
    ]


def report(summary: dict[str, Any]) -> Iterator[str]:
    yield f"legitimate login sessions: {summary['legit_sessions']}"
    yield f"  succeeded:  {summary['legit_succeeded_pct']}%"
    yield f"  challenged: {summary['legit_challenged_pct']}%"
    yield f"  blocked:    {summary['legit_blocked']}"
    yield f"attack attempts: {summary['attack_attempts']}"
    yield f"valid pairs tried: {summary['valid_pairs_tried']}, seen to succeed: {summary['valid_pairs_seen']}"
    yield f"  attacker saw success for {summary['attacker_success_pct']}% of the valid pairs it tried"
    yield f"guard actions: {summary['actions']}"
    for text, ok, value in check(summary):
        yield f"{'PASS' if ok else 'FAIL'}  {text}: {value}"
