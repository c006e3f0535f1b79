"""``guard report``: which accounts were exposed, and what an attack looked like.

*Exposed*: accounts whose valid password was presented from a flagged source,
one row per account (first and last time, sources, countries, why flagged),
split into **seen** (the upstream's success reached the source: the attacker
knows the pair works) and **withheld** (the guard held the answer: the attacker
learned nothing, the password is still known to them), and a by-country table
like the one in the incident report.  Accounts are counted by the country of
their first exposure.

*Attack*: a window summarised from the decision log (sources, subnets,
countries, ASNs, accounts targeted, outcomes, rules) and the ledger.

The ledger stores the login id sealed; ``open_login`` (supplied by the caller,
who holds the key) opens it, and a row whose id does not open is still counted.
Everything here is pure over rows, so tests feed scripted rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.engine.bancache import subnet_of
from guard.observe.countries import country_name
from guard.observe.events import ExposureEntry

OpenLogin = Callable[[str], "str | None"]
COUNTRY_ROWS = 10


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(slots=True)
class AccountRow:
    user_key: str
    login: str | None
    seen: bool
    seen_count: int
    withheld_count: int
    first: float
    last: float
    country: str
    countries: list[str]
    sources: int
    flags: list[str]
    endpoints: list[str]


@dataclass(slots=True)
class CountryRow:
    code: str
    name: str
    accounts: int
    seen: int
    withheld: int


@dataclass(slots=True)
class ExposedReport:
    since: float | None
    until: float | None
    accounts: list[AccountRow] = field(default_factory=list)
    countries: list[CountryRow] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return sum(1 for a in self.accounts if a.seen)

    @property
    def withheld(self) -> int:
        return sum(1 for a in self.accounts if not a.seen)


def _safe_open(open_login: OpenLogin | None, sealed: str) -> str | None:
    if open_login is None or not sealed:
        return None
    try:
        return open_login(sealed)
    except Exception:  # a row sealed with a retired key is still an exposed account
        return None


def exposed(entries: Iterable[ExposureEntry], open_login: OpenLogin | None = None,
            since: float | None = None, until: float | None = None) -> ExposedReport:
    by_user: dict[str, list[ExposureEntry]] = {}
    for e in entries:
        if (since is not None and e.ts < since) or (until is not None and e.ts >= until):
            continue
        by_user.setdefault(e.user_key, []).append(e)
    rows: list[AccountRow] = []
    for user_key, es in by_user.items():
        es.sort(key=lambda e: e.ts)
        login = None
        for e in es:
            login = _safe_open(open_login, e.login_sealed)
            if login is not None:
                break
        seen_n = sum(1 for e in es if e.seen)
        rows.append(AccountRow(
            user_key=user_key, login=login, seen=seen_n > 0, seen_count=seen_n,
            withheld_count=len(es) - seen_n,
            first=es[0].ts, last=es[-1].ts, country=es[0].country,
            countries=sorted({e.country for e in es if e.country}), sources=len({e.ip for e in es}),
            flags=sorted({f for e in es for f in e.flags}),
            endpoints=sorted({e.endpoint for e in es if e.endpoint}),
        ))
    rows.sort(key=lambda r: (not r.seen, r.first))
    return ExposedReport(since, until, rows, by_country(rows))


def by_country(rows: Iterable[AccountRow], limit: int | None = None) -> list[CountryRow]:
    """Accounts per country of first exposure, largest first; past ``limit`` rows, one ``other`` row."""
    acc: dict[str, list[int]] = {}
    for r in rows:
        c = acc.setdefault(r.country, [0, 0])
        c[0 if r.seen else 1] += 1
    ranked = sorted(acc.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
    out = [CountryRow(code, country_name(code), s + w, s, w) for code, (s, w) in ranked]
    if limit is not None and len(out) > limit:
        rest = out[limit:]
        out = out[:limit]
        out.append(CountryRow("", "other", sum(r.accounts for r in rest), sum(r.seen for r in rest),
                              sum(r.withheld for r in rest)))
    return out


def summary(entries: Iterable[ExposureEntry], since: float | None = None, top: int = 5) -> dict[str, Any]:
    """The dashboard's ledger panel: totals and the top countries."""
    rep = exposed(entries, None, since)
    return {
        "accounts": len(rep.accounts), "seen": rep.seen, "withheld": rep.withheld,
        "last": max((a.last for a in rep.accounts), default=None),
        "countries": [{"code": c.code, "name": c.name, "accounts": c.accounts}
                      for c in by_country(rep.accounts, top)],
    }


# ---- rendering ------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _country_table(rows: list[CountryRow]) -> list[str]:
    return _table(["country", "accounts", "seen", "withheld"],
                  [[c.name, f"{c.accounts:,}", f"{c.seen:,}", f"{c.withheld:,}"] for c in rows], {1, 2, 3})


def render_exposed(rep: ExposedReport, fmt: str = "table", country_rows: int = COUNTRY_ROWS) -> str:
    if fmt == "json":
        return json.dumps({
            "since": rep.since, "until": rep.until,
            "totals": {"accounts": len(rep.accounts), "seen": rep.seen, "withheld": rep.withheld},
            "by_country": [asdict(c) for c in rep.countries],
            "accounts": [asdict(a) for a in rep.accounts],
        }, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["login", "user_key", "status", "seen_count", "withheld_count", "first", "last", "country",
                    "countries", "sources", "flags", "endpoints"])
        for a in rep.accounts:
            w.writerow([a.login or "", a.user_key, "seen" if a.seen else "withheld", a.seen_count,
                        a.withheld_count, fmt_time(a.first), fmt_time(a.last), a.country,
                        " ".join(a.countries), a.sources, " ".join(a.flags), " ".join(a.endpoints)])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (use table, csv or json)")
    out = [
        f"Exposed accounts: {len(rep.accounts):,}  (seen by the source: {rep.seen:,}; "
        f"withheld by the guard: {rep.withheld:,})",
        f"Window: {fmt_time(rep.since) or 'beginning'} .. {fmt_time(rep.until) or 'now'}",
        "",
        "By country/region (country of first exposure):",
    ]
    countries = by_country(rep.accounts, country_rows)
    out += _country_table(countries)
    out += ["", "Accounts (seen first, then by first exposure):"]
    out += _table(
        ["login", "status", "first", "last", "country", "sources", "flags"],
        [[a.login or f"<sealed {a.user_key[:12]}>", "SEEN" if a.seen else "withheld", fmt_time(a.first),
          fmt_time(a.last), a.country or "-", str(a.sources), ",".join(a.flags)] for a in rep.accounts],
        {5},
    )
    return "\n".join(out) + "\n"


# ---- attack summary from the decision log ------------------------------------------------------------


def read_decisions(files: Iterable[Path], since: float | None,
                   until: float | None) -> Iterator[dict[str, Any]]:
    """Decision-log lines within the window, from rotated files oldest first; bad lines are skipped."""
    for path in files:
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(d, dict) or d.get("event") != "decision":
                    continue
                ts = d.get("ts")
                if not isinstance(ts, int | float):
                    continue
                if (since is not None and ts < since) or (until is not None and ts >= until):
                    continue
                yield d


@dataclass(slots=True)
class AttackReport:
    since: float | None
    until: float | None
    first: float | None = None
    last: float | None = None
    requests: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    login_outcomes: dict[str, int] = field(default_factory=dict)
    sources: int = 0
    subnets: int = 0
    accounts_targeted: int = 0
    countries: list[tuple[str, int]] = field(default_factory=list)
    asns: list[tuple[int, int]] = field(default_factory=list)
    top_sources: list[tuple[str, int]] = field(default_factory=list)
    rules: list[tuple[str, int]] = field(default_factory=list)
    exposed_accounts: int = 0
    exposed_seen: int = 0
    exposed_withheld: int = 0
    exposed_by_country: list[CountryRow] = field(default_factory=list)
    logs_read: bool = False


def attack(decisions: Iterable[dict[str, Any]], ledger: Iterable[ExposureEntry],
           since: float | None, until: float | None, top: int = 10, logs_read: bool = True) -> AttackReport:
    """Hostile traffic only: login attempts and blocking decisions (the site's normal reads are no attack)."""
    rep = AttackReport(since, until, logs_read=logs_read)
    actions: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    ips: Counter[str] = Counter()
    subnets: set[str] = set()
    users: set[str] = set()
    countries: Counter[str] = Counter()
    asns: Counter[int] = Counter()
    rules: Counter[str] = Counter()
    for d in decisions:
        action = str(d.get("action", ""))
        login = d.get("login")
        blocking = action in ("block", "ban", "challenge", "tarpit", "unavailable") or bool(d.get("shadow"))
        if login is None and not blocking:
            continue
        ts = float(d["ts"])
        rep.first = ts if rep.first is None else min(rep.first, ts)
        rep.last = ts if rep.last is None else max(rep.last, ts)
        rep.requests += 1
        actions[action] += 1
        if login is not None:
            outcomes[str(d.get("outcome", "none"))] += 1
        ip = str(d.get("ip", ""))
        ips[ip] += 1
        try:
            subnets.add(subnet_of(ip))
        except (OSError, ValueError):
            pass
        if d.get("user"):
            users.add(str(d["user"]))
        countries[str(d.get("country", ""))] += 1
        if d.get("asn"):
            asns[int(d["asn"])] += 1
        rules.update(str(r) for r in d.get("rules", ()))
    rep.actions = dict(actions.most_common())
    rep.login_outcomes = dict(outcomes.most_common())
    rep.sources = len(ips)
    rep.subnets = len(subnets)
    rep.accounts_targeted = len(users)
    rep.countries = countries.most_common(top)
    rep.asns = asns.most_common(top)
    rep.top_sources = ips.most_common(top)
    rep.rules = rules.most_common(top)
    exp = exposed(ledger, None, since, until)
    rep.exposed_accounts = len(exp.accounts)
    rep.exposed_seen = exp.seen
    rep.exposed_withheld = exp.withheld
    rep.exposed_by_country = by_country(exp.accounts, top)
    return rep


def render_attack(rep: AttackReport, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(asdict(rep), indent=2, ensure_ascii=False) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (use table or json)")
    out = [f"Attack window: {fmt_time(rep.since) or 'beginning'} .. {fmt_time(rep.until) or 'now'}"]
    if not rep.logs_read:
        out.append("(no decision log file configured: no traffic figures; exposures are from the ledger)")
    first, last = fmt_time(rep.first) or "-", fmt_time(rep.last) or "-"
    out += [
        f"Hostile requests: {rep.requests:,}  first {first}  last {last}",
        f"Sources: {rep.sources:,} addresses in {rep.subnets:,} subnets; "
        f"accounts targeted: {rep.accounts_targeted:,}",
        "Actions: " + (", ".join(f"{k} {v:,}" for k, v in rep.actions.items()) or "-"),
        "Login outcomes: " + (", ".join(f"{k} {v:,}" for k, v in rep.login_outcomes.items()) or "-"),
        f"Exposed accounts: {rep.exposed_accounts:,} "
        f"(seen {rep.exposed_seen:,}, withheld {rep.exposed_withheld:,})",
        "",
    ]
    countries = [[country_name(c), f"{n:,}"] for c, n in rep.countries]
    out += [*_table(["country", "requests"], countries, {1}), ""]
    out += [*_table(["ASN", "requests"], [[f"AS{a}", f"{n:,}"] for a, n in rep.asns], {1}), ""]
    out += [*_table(["source", "requests"], [[ip, f"{n:,}"] for ip, n in rep.top_sources], {1}), ""]
    out += [*_table(["rule", "hits"], [[r, f"{n:,}"] for r, n in rep.rules], {1}), ""]
    out += ["Exposed accounts by country/region:", *_country_table(rep.exposed_by_country)]
    return "\n".join(out) + "\n"
