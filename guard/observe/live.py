"""The live view behind the dashboard and the admin API: recent decisions, per-second series, top talkers.

Everything is bounded whatever the traffic: a ring of recent decisions, a fixed
ring of per-second buckets for a fixed set of categories, and top-talker tables
that keep at most ``2 * capacity`` keys each.  A botnet of a million addresses
costs the same memory as ten.

Top talkers are approximate heavy hitters (the space-saving idea, pruned in
batches): a key that is evicted leaves its count as a floor that a new key
starts from, so a real heavy hitter is never under-counted and a newcomer may be
over-counted by at most that floor.  Two generations of ``window`` seconds keep
the tables about *now*: an attacker from yesterday drops out.

"Hostile" traffic feeds the tables: decisions that block (or would, in shadow
mode) and logins the upstream refused.  Usernames appear only as the engine's
keyed hashes.

``snapshot()`` renders the state as plain JSON, and ``merge()`` combines the
snapshots of several worker processes, so the API answers for the whole guard,
not for whichever worker the request landed on (see ``guard.observe.share``).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from guard.engine.bancache import subnet_of
from guard.engine.decision import Action
from guard.observe.decisionlog import clean_path
from guard.observe.events import NullObserver, RequestEvent

DIMENSIONS = ("ip", "subnet", "asn", "country", "username")
ACTIONS = tuple(a.value for a in Action)
LOGIN_CATS = ("login_success", "login_failure", "login_unknown")
CHALLENGE_CATS = ("challenge_issued", "challenge_passed", "challenge_failed", "challenge_expired",
                  "challenge_exhausted", "challenge_send_failed")
CATEGORIES = (*ACTIONS, *LOGIN_CATS, *CHALLENGE_CATS)
MAX_RULES = 4096


class TopK:
    """Approximate counts of the heaviest keys over the last one to two windows."""

    __slots__ = ("_cur", "_floor", "_prev", "_start", "capacity", "window")

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = capacity
        self.window = window
        self._cur: dict[str, int] = {}
        self._prev: dict[str, int] = {}
        self._floor = 0
        self._start = 0.0

    def add(self, key: str, ts: float, n: int = 1) -> None:
        if ts - self._start >= self.window:
            self._prev = self._cur if ts - self._start < 2 * self.window else {}
            self._cur = {}
            self._floor = 0
            self._start = ts
        cur = self._cur
        count = cur.get(key)
        cur[key] = (self._floor if count is None else count) + n
        if len(cur) > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        """Keep the ``capacity`` largest; the largest evicted count becomes the floor (amortised O(log k))."""
        ranked = sorted(self._cur.items(), key=lambda kv: kv[1], reverse=True)
        keep, evicted = ranked[: self.capacity], ranked[self.capacity :]
        self._floor = max(self._floor, evicted[0][1]) if evicted else self._floor
        self._cur = dict(keep)

    def top(self, limit: int) -> list[tuple[str, int]]:
        merged = dict(self._prev)
        for k, v in self._cur.items():
            merged[k] = merged.get(k, 0) + v
        return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    def __len__(self) -> int:
        return len(self._cur) + len(self._prev)


class Series:
    """Per-second counts of a fixed set of categories over the last ``seconds`` seconds."""

    __slots__ = ("_rows", "_stamp", "seconds")

    def __init__(self, seconds: int, categories: Iterable[str] = CATEGORIES) -> None:
        self.seconds = seconds
        self._stamp = [-1] * seconds
        self._rows = {c: [0] * seconds for c in categories}

    def add(self, category: str, ts: float, n: int = 1) -> None:
        row = self._rows.get(category)
        if row is None:
            return
        sec = int(ts)
        i = sec % self.seconds
        if self._stamp[i] != sec:
            for r in self._rows.values():
                r[i] = 0
            self._stamp[i] = sec
        row[i] += n

    def window(self, now: float, seconds: int, step: int = 1) -> dict[str, Any]:
        """Counts for the ``seconds`` up to ``now`` in buckets of ``step`` seconds, oldest first."""
        seconds = max(step, min(seconds, self.seconds))
        end = int(now)
        buckets = seconds // step
        start = end - buckets * step + 1
        out: dict[str, list[int]] = {c: [0] * buckets for c in self._rows}
        for sec in range(start, end + 1):
            i = sec % self.seconds
            if self._stamp[i] != sec:
                continue
            b = (sec - start) // step
            for c, row in self._rows.items():
                v = row[i]
                if v:
                    out[c][b] += v
        return {"start": start, "step": step, "counts": out}


class LiveView(NullObserver):
    def __init__(self, recent: int = 2000, seconds: int = 900, top_capacity: int = 500,
                 top_window: float = 900.0) -> None:
        self.started = time.time()
        self._recent: deque[tuple[Any, ...]] = deque(maxlen=recent)
        self.series = Series(seconds)
        self.top = {d: TopK(top_capacity, top_window) for d in DIMENSIONS}
        self._top_ip = self.top["ip"]
        self.rule_hits: dict[str, list[int]] = {}
        self.totals: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.attack_state: dict[str, Any] = {"active": False, "since": None}
        self._series_add = self.series.add

    # ---- observer ----------------------------------------------------------------------------------

    def request(self, event: RequestEvent) -> None:
        ts = event.ts
        req = event.req
        d = event.decision
        action = d.action.value
        self._recent.append((ts, req.client_ip, req.method, req.path, event.status, action, d.shadow,
                             req.login, req.outcome, d.reasons, event.country, event.asn, event.score,
                             event.user_key))
        self._series_add(action, ts)
        totals = self.totals
        totals[action] += 1
        outcome = req.outcome
        if req.login is not None and outcome is not None:
            cat = "login_" + outcome
            self._series_add(cat, ts)
            if cat in totals:
                totals[cat] += 1
        for r in d.reasons:
            hits = self.rule_hits.get(r.rule)
            if hits is None:
                if len(self.rule_hits) >= MAX_RULES:
                    continue
                hits = self.rule_hits[r.rule] = [0, 0]
            hits[1 if (r.shadow or d.shadow) else 0] += 1
        if d.action.blocks or outcome == "failure":
            self._hostile(event, ts)

    def _hostile(self, event: RequestEvent, ts: float) -> None:
        ip = event.req.client_ip
        self._top_ip.add(ip, ts)
        try:
            self.top["subnet"].add(subnet_of(ip), ts)
        except (OSError, ValueError):
            pass
        if event.asn:
            self.top["asn"].add(str(event.asn), ts)
        if event.country:
            self.top["country"].add(event.country, ts)
        if event.user_key:
            self.top["username"].add(event.user_key, ts)

    def challenge(self, event: str, channel: str = "") -> None:
        cat = "challenge_" + event
        if cat in self.totals:
            self.totals[cat] += 1
            self._series_add(cat, time.time())

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None:
        was = self.attack_state.get("active", False)
        since = (self.attack_state.get("since") if was else time.time()) if active else None
        self.attack_state = {
            "active": active, "since": since,
            "failures": failures, "rate_per_min": rate_per_min, "baseline_per_min": baseline_per_min,
            "updated": time.time(),
        }

    # ---- views --------------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None, recent: int | None = None, seconds: int = 600,
                 step: int = 5, top: int = 50) -> dict[str, Any]:
        """Plain JSON state; ``merge`` of several such snapshots is the guard-wide view."""
        now = time.time() if now is None else now
        rows = list(self._recent)
        if recent is not None:
            rows = rows[-recent:] if recent else []
        return {
            "pid": os.getpid(), "ts": now, "started": self.started,
            "series": self.series.window(now, seconds, step),
            "top": {d: [[k, c] for k, c in t.top(top)] for d, t in self.top.items()},
            "rules": {r: {"enforce": h[0], "shadow": h[1]} for r, h in self.rule_hits.items()},
            "totals": dict(self.totals),
            "attack": dict(self.attack_state),
            "recent": [_row(r) for r in reversed(rows)],
        }


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    (ts, ip, method, path, status, action, shadow, login, outcome, reasons, country, asn, score, user) = r
    out: dict[str, Any] = {
        "ts": ts, "ip": ip, "method": method, "path": clean_path(path), "status": status, "action": action,
        "rules": [x.rule for x in reasons],
    }
    if shadow:
        out["shadow"] = True
    if login is not None:
        out["login"] = login
        out["outcome"] = outcome or "none"
    if country:
        out["country"] = country
    if asn:
        out["asn"] = asn
    if score:
        out["score"] = score
    if user:
        out["user"] = user[:16]
    return out


def merge(snapshots: list[Mapping[str, Any]], recent: int = 2000, top: int = 50) -> dict[str, Any]:
    """Combine worker snapshots: sum counts and series, union top tables, interleave recent rows by time."""
    if len(snapshots) == 1:
        return dict(snapshots[0])
    base = max(snapshots, key=lambda s: s["ts"])
    series = base["series"]
    counts: dict[str, list[int]] = {c: list(v) for c, v in series["counts"].items()}
    start, step = series["start"], series["step"]
    totals: dict[str, int] = {}
    rules: dict[str, dict[str, int]] = {}
    tops: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
    rows: list[dict[str, Any]] = []
    attack = dict(base["attack"])
    for s in snapshots:
        for k, v in s["totals"].items():
            totals[k] = totals.get(k, 0) + v
        for r, h in s["rules"].items():
            acc = rules.setdefault(r, {"enforce": 0, "shadow": 0})
            acc["enforce"] += h["enforce"]
            acc["shadow"] += h["shadow"]
        for d, pairs in s["top"].items():
            table = tops.setdefault(d, {})
            for k, c in pairs:
                table[k] = table.get(k, 0) + c
        rows.extend(s["recent"])
        if s["attack"].get("active"):
            attack = dict(s["attack"])
        if s is base:
            continue
        other = s["series"]
        if other["step"] != step:
            continue
        shift = (other["start"] - start) // step
        for c, values in other["counts"].items():
            target = counts.setdefault(c, [0] * len(values))
            for i, v in enumerate(values):
                j = i + shift
                if 0 <= j < len(target):
                    target[j] += v
    rows.sort(key=lambda r: r["ts"], reverse=True)
    return {
        "pid": base["pid"], "ts": base["ts"], "started": min(s["started"] for s in snapshots),
        "workers": len(snapshots),
        "series": {"start": start, "step": step, "counts": counts},
        "top": {d: [[k, c] for k, c in sorted(t.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
                for d, t in tops.items()},
        "rules": rules, "totals": totals, "attack": attack, "recent": rows[:recent],
    }


def filter_recent(rows: Iterable[Mapping[str, Any]], action: str | None = None, ip: str | None = None,
                  rule: str | None = None, limit: int = 100) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for r in rows:
        if action and r["action"] != action:
            continue
        if ip and r["ip"] != ip:
            continue
        if rule and rule not in r["rules"]:
            continue
        out.append(r)
        if len(out) >= limit:
            break
    return out
