"""``guard report``: the incident's by-country table from a scripted ledger, seen vs withheld, all formats."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from guard.engine.decision import Action
from guard.observe.countries import NAMES
from guard.observe.decisionlog import DecisionLog
from guard.observe.events import ExposureEntry
from guard.observe.ledger import FileLedger
from guard.observe.reports import attack, exposed, read_decisions, render_attack, render_exposed
from guard.observe.settings import DecisionLogSettings
from guard.reportcli import parse_when, run
from tests.observe_fixtures import event, exposure, make_config

KEY = AESGCM(b"\x01" * 32)
T0 = 1_601_683_200.0     # 2020-10-03, when the incident's attempts began
# The incident: 3,035 accounts; Japan 2,888, Taiwan 21, Thailand 3, other 123.
# "Other" is many countries with one or two accounts each, as in a real spread.
_OTHER = [c for c in sorted(NAMES) if c not in ("JP", "TW", "TH")][:62]
MIX = [("JP", 2888), ("TW", 21), ("TH", 3), *[(c, 2) for c in _OTHER[:61]], (_OTHER[61], 1)]


def seal(login: str) -> str:
    nonce = os.urandom(12)
    return base64.urlsafe_b64encode(nonce + KEY.encrypt(nonce, login.encode(), b"login")).decode()


def open_login(token: str) -> str | None:
    blob = base64.urlsafe_b64decode(token)
    try:
        return KEY.decrypt(blob[:12], blob[12:], b"login").decode()
    except InvalidTag:
        return None


def scripted() -> list[ExposureEntry]:
    rows: list[ExposureEntry] = []
    n = 0
    for country, count in MIX:
        for _ in range(count):
            # every 10th account: the guard held the upstream's answer (withheld); the rest leaked before it
            seen = n % 10 != 0
            sealed = seal(f"user{n}@example.jp")
            rows.append(exposure(f"key{n:05d}", country, seen, T0 + n * 60, sealed=sealed))
            n += 1
    # the same account seen twice more, later and from elsewhere: still one account, first country counts
    rows.append(exposure("key00001", "TW", False, T0 + 10**6, sealed=seal("user1@example.jp"),
                         ip="192.0.2.8"))
    rows.append(ExposureEntry(T0 + 2 * 10**6, "key00001", "not-a-sealed-id", "192.0.2.9", "", 0, ("honey",),
                              True))
    return rows


def test_by_country_table_like_the_incident() -> None:
    rep = exposed(scripted(), open_login)
    assert len(rep.accounts) == 3035
    assert rep.withheld == 304 and rep.seen == 3035 - 304
    countries = {c.name: c.accounts for c in rep.countries}
    assert countries["Japan"] == 2888 and countries["Taiwan"] == 21 and countries["Thailand"] == 3
    text = render_exposed(rep, "table", country_rows=3)
    assert "Exposed accounts: 3,035" in text
    table = text.split("Accounts (")[0]
    rows = [ln.split()[:2] for ln in table.splitlines()[6:]]
    assert rows[:4] == [["Japan", "2,888"], ["Taiwan", "21"], ["Thailand", "3"], ["other", "123"]]
    one = next(a for a in rep.accounts if a.user_key == "key00001")
    assert one.login == "user1@example.jp" and one.country == "JP" and one.sources == 3
    assert one.seen_count == 2 and one.withheld_count == 1 and one.flags == ["honey", "score"]


def test_csv_and_json() -> None:
    rep = exposed(scripted(), open_login, since=T0, until=T0 + 100 * 60)
    rows = list(csv.DictReader(io.StringIO(render_exposed(rep, "csv"))))
    assert len(rows) == 100
    assert rows[0]["status"] == "seen" and rows[-1]["status"] == "withheld"
    assert {r["login"] for r in rows} >= {"user1@example.jp", "user99@example.jp"}
    doc = json.loads(render_exposed(rep, "json"))
    assert doc["totals"] == {"accounts": 100, "seen": 90, "withheld": 10}
    assert doc["by_country"][0]["name"] == "Japan"
    assert exposed(scripted())  .accounts[0].login is None        # no key: logins stay sealed


async def test_attack_summary_from_decision_log_and_ledger(tmp_path: Path) -> None:
    log = DecisionLog(DecisionLogSettings(path=tmp_path / "d.log"))
    now = 1_700_000_000.0
    for i in range(40):
        log.request(event(ip=f"203.0.113.{i % 8}", login="login", outcome="failure", user_key=f"u{i}",
                          country="JP" if i % 4 else "TW", asn=64500, ts=now + i))
    for i in range(10):
        log.request(event(ip="198.51.100.9", action=Action.BAN, rules=("many-users",), status=403,
                          login="login", country="TH", asn=64501, ts=now + 50 + i))
    log.request(event(ip="192.0.2.1", ts=now + 5))        # ordinary page view: not the attack
    log.request(event(ip="203.0.113.1", login="login", outcome="failure", ts=now - 3600))  # before the window
    await log.close()
    ledger = [exposure("u3", "JP", True, now + 3), exposure("u5", "JP", False, now + 5)]
    rep = attack(read_decisions([tmp_path / "d.log"], now, now + 3600), ledger, now, now + 3600)
    assert rep.requests == 50 and rep.sources == 9 and rep.subnets == 2 and rep.accounts_targeted == 40
    assert rep.actions == {"pass": 40, "ban": 10} and rep.login_outcomes == {"failure": 40, "none": 10}
    assert rep.countries[0] == ("JP", 30) and rep.rules == [("many-users", 10)]
    assert rep.exposed_accounts == 2 and rep.exposed_seen == 1
    text = render_attack(rep)
    assert "Japan" in text and "AS64500" in text and "Exposed accounts: 2 (seen 1, withheld 1)" in text


def test_cli_reads_the_ledger_where_the_guard_writes_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    import asyncio

    asyncio.run(FileLedger(config.state_dir / "exposure-ledger.jsonl", 1000).append(scripted()[:50]))
    args = argparse.Namespace(report_command="exposed", since=None, until=None, format="json", countries=10)
    doc = json.loads(run(args, config, open_login))
    assert doc["totals"]["accounts"] == 50
    args = argparse.Namespace(report_command="attack", since="2020-10-01", until="2020-10-05", format="json",
                              log=None)
    assert json.loads(run(args, config))["exposed_accounts"] == 50


def test_parse_when() -> None:
    assert parse_when("2021-01-19T08:30:00+09:00") == 1611012600.0
    assert parse_when("2021-01-19") == 1611014400.0
    assert parse_when("1h", now=10_000.0) == 6400.0
    assert parse_when(None) is None
