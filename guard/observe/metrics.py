"""Prometheus metrics: an ``Observer`` that counts, and the ``/metrics`` text.

Labels carry only bounded values: actions, status classes, rule and login
endpoint ids (both come from the config), event names from fixed sets.  Never an
IP, a username, a path or a free-text reason: a label value per attacker would
turn a credential-stuffing run into a cardinality explosion in Prometheus.

With ``--workers N`` every worker is its own process and a scrape reaches one
of them at random, so per-process counters would be wrong.  When
``PROMETHEUS_MULTIPROC_DIR`` is set (the supervisor sets it before forking)
values live in memory-mapped files in that folder, one per process, and a
scrape merges them all (prometheus-client's multiprocess mode).  Gauges then
need an explicit merge mode: ``livemax`` for state every worker sees alike (bans
from the shared store, the attack flag), so dead workers drop out.

The request path only touches pre-resolved label children from a small dict:
``labels()`` itself costs more than the increment.  And it does not increment
them: prometheus-client takes a lock for every ``inc`` and every histogram
``observe`` (three of them and a bucket search per request, about 13 us of the
guard's 540 us per GET on a slow VM), so the request path adds to plain ints
(a dict keyed by child, and a ``_Tally`` per histogram) and ``flush`` hands the sums over in one
``inc`` per child: once a second from the hub's poll, before every scrape, and
at close.  A scrape of this process is exact; with ``--workers N`` another
worker's counts may be up to a second behind, well inside any scrape interval.
"""

from __future__ import annotations

import logging
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from guard.observe.events import ExposureEntry, NullObserver, RequestEvent

log = logging.getLogger("guard.observe.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The guard's own cost per request is tens of microseconds: buckets start well below a millisecond.
OVERHEAD_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 0.5)
STORE_BUCKETS = (100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)

CHALLENGE_EVENTS = frozenset({
    "issued", "passed", "failed", "expired", "exhausted", "send_failed", "resent", "resend_limited",
    "enrolled", "enrol_skipped", "enrol_wrong",
})
_LABEL_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_STATUS_CLASS = {c: f"{c}xx" for c in range(1, 6)}


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _ensure_value_class() -> None:
    """Switch prometheus-client to mmap-backed values if the env var appeared after its import.

    prometheus-client picks its value class when first imported; the supervisor
    may set ``PROMETHEUS_MULTIPROC_DIR`` later (a test, or an import chain that
    pulled prometheus-client in early).  Metrics built before that would count
    in private memory and vanish from the merged scrape.
    """
    if multiproc_dir() is not None and values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _Tally:
    """A histogram's observations since the last flush, as plain numbers.

    ``flush`` adds them to the histogram's own values: prometheus-client has no public
    call that adds a bucket count at once, so this reads ``_upper_bounds``, ``_buckets``
    and ``_sum`` (``Metrics`` checks for them at start and observes value by value when
    they are missing; a test pins the scrape to what observing gives).
    """

    __slots__ = ("bounds", "counts", "hist", "total")

    def __init__(self, hist: Histogram) -> None:
        self.hist = hist
        self.bounds = tuple(hist._upper_bounds)   # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, amount: float) -> None:
        # the first bucket whose upper bound is >= amount, as ``Histogram.observe`` picks it
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        hist = self.hist
        self.counts = [0] * len(counts)
        total, self.total = self.total, 0.0
        hist._sum.inc(total)
        for bucket, n in zip(hist._buckets, counts, strict=True):
            if n:
                bucket.inc(n)

    @staticmethod
    def usable(hist: Histogram) -> bool:
        bounds = getattr(hist, "_upper_bounds", None)
        buckets = getattr(hist, "_buckets", None)
        return (
            bounds is not None and buckets is not None and hasattr(hist, "_sum")
            and len(bounds) == len(buckets) and list(bounds) == sorted(bounds)
        )


def _bounded(value: str, fallback: str = "other") -> str:
    return value if _LABEL_OK.match(value) else fallback


class Metrics(NullObserver):
    """Counts what the guard does; ``render()`` is the scrape."""

    def __init__(self, multiproc: Path | bool | None = True) -> None:
        """``multiproc``: True follows the environment, a path forces that folder, False/None disables."""
        if multiproc is True:
            self.multiproc = multiproc_dir()
        else:
            self.multiproc = multiproc or None
        if self.multiproc is not None:
            if multiproc_dir() is None:
                os.environ[MULTIPROC_ENV] = str(self.multiproc)
            _ensure_value_class()
        # A private registry: several Metrics in one process (tests, a reload) never collide.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("guard_requests", "Requests by decided action and response status class.",
                                ["action", "status_class"], registry=reg)
        self.rule_hits = Counter("guard_rule_hits", "Rule matches that contributed to a decision.",
                                 ["rule", "mode"], registry=reg)
        self.logins = Counter("guard_login_attempts", "Login attempts by endpoint and outcome.",
                              ["endpoint", "outcome"], registry=reg)
        self.challenges = Counter("guard_challenges", "Second-factor challenge events.",
                                  ["event", "channel"], registry=reg)
        self.bans_active = Gauge("guard_bans_active", "Active bans (from the shared store).",
                                 registry=reg, multiprocess_mode="livemax")
        self.bans_total = Counter("guard_bans", "Bans placed, by rule id (or manual).", ["reason"],
                                  registry=reg)
        self.unbans_total = Counter("guard_unbans", "Bans removed before they expired.", registry=reg)
        self.pii_fields = Counter("guard_pii_fields", "PII fields rewritten in responses.", ["kind", "mode"],
                                  registry=reg)
        self.pii_pages = Counter(
            "guard_pii_pages",
            "HTML responses under the PII policy: scan=full (read by the rewriter) or "
            "scan=unread (no field that could hold PII: passed on as it came).",
            ["scan"], registry=reg,
        )
        self._pii_scan = {True: self.pii_pages.labels("full"), False: self.pii_pages.labels("unread")}
        self.pii_tamper = Counter("guard_pii_tamper", "Submitted PII tokens that were swapped or forged.",
                                  registry=reg)
        self.upstream_latency = Histogram("guard_upstream_latency_seconds",
                                          "Upstream response time (headers).",
                                          buckets=UPSTREAM_BUCKETS, registry=reg)
        self.overhead = Histogram("guard_overhead_seconds", "Time the guard itself adds to a request.",
                                  buckets=OVERHEAD_BUCKETS, registry=reg)
        self.store_errors = Counter("guard_store_errors", "State-store operations that failed.", registry=reg)
        self.store_latency = Histogram("guard_store_latency_seconds", "State-store batch latency.",
                                       buckets=STORE_BUCKETS, registry=reg)
        self.reloads = Counter("guard_rule_reloads", "Config and rule reloads by result.", ["result"],
                               registry=reg)
        self.attack_gauge = Gauge("guard_attack_in_progress",
                                  "1 while the global failure-spike detector is on.",
                                  registry=reg, multiprocess_mode="livemax")
        self.exposures = Counter("guard_exposures", "Valid passwords presented from flagged sources.",
                                 ["seen"], registry=reg)
        self.refused = Counter("guard_overload_refused",
                               "Requests and connections answered 503 to shed load, by stage and reason.",
                               ["stage", "reason"], registry=reg)
        self.loop_lag = Gauge("guard_event_loop_lag_seconds",
                              "Largest event-loop lag seen in the last second (limits.max_loop_lag sheds).",
                              registry=reg, multiprocess_mode="livemax")
        self.store_keys = Gauge("guard_store_keys",
                                "Keys held by the in-process memory store (store.max_keys caps it).",
                                registry=reg, multiprocess_mode="livesum")
        self._refused_seen: dict[tuple[str, str], int] = {}
        self.dropped = Counter("guard_observe_dropped",
                               "Records an observer had to drop (full disk, queue full).",
                               ["sink"], registry=reg)
        self.drop_counts: dict[str, int] = {}   # this process's drops, for /api/health
        self.known_rules: Collection[str] = frozenset()
        self._req: dict[tuple[str, int], Any] = {}
        self._hits: dict[tuple[str, bool], Any] = {}
        self._login: dict[tuple[str, str], Any] = {}
        # counts since the last flush: label child -> increments, and the two request histograms
        self._pending: dict[Any, int] = {}
        deferred = _Tally.usable(self.upstream_latency) and _Tally.usable(self.overhead)
        self._tallies: tuple[_Tally, ...] = ()
        self._observe_upstream: Callable[[float], None] = self.upstream_latency.observe
        self._observe_overhead: Callable[[float], None] = self.overhead.observe
        if deferred:
            up, over = _Tally(self.upstream_latency), _Tally(self.overhead)
            self._tallies = (up, over)
            self._observe_upstream, self._observe_overhead = up.add, over.add

    # ---- observer ---------------------------------------------------------------------------------

    def request(self, event: RequestEvent) -> None:
        d = event.decision
        pending = self._pending
        key = (d.action.value, event.status // 100)
        child = self._req.get(key)
        if child is None:
            child = self._req[key] = self.requests.labels(key[0], _STATUS_CLASS.get(key[1], "other"))
        pending[child] = pending.get(child, 0) + 1
        for r in d.reasons:
            hk = (r.rule, r.shadow or d.shadow)
            hit = self._hits.get(hk)
            if hit is None:
                if len(self._hits) > 4096:  # rule ids are config-bounded; this is the belt to those braces
                    hk = ("other", hk[1])
                mode = "shadow" if hk[1] else "enforce"
                hit = self._hits[hk] = self.rule_hits.labels(_bounded(hk[0]), mode)
            pending[hit] = pending.get(hit, 0) + 1
        login = event.req.login
        if login is not None:
            outcome = event.req.outcome or ("blocked" if not d.forwards else "unknown")
            lk = (login, outcome)
            lc = self._login.get(lk)
            if lc is None:
                lc = self._login[lk] = self.logins.labels(_bounded(login), _bounded(outcome))
            pending[lc] = pending.get(lc, 0) + 1
        if event.upstream_s is not None:
            self._observe_upstream(event.upstream_s)
        self._observe_overhead(event.overhead_s)

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None:
        if removed:
            self.unbans_total.inc()
            return
        label = reason if reason in self.known_rules or reason == "manual" else "manual"
        self.bans_total.labels(label).inc()

    def challenge(self, event: str, channel: str = "") -> None:
        name = event if event in CHALLENGE_EVENTS else "other"
        self.challenges.labels(name, _bounded(channel or "none")).inc()

    def pii(self, path: str, kind: str, mode: str, count: int) -> None:
        # ``path`` is deliberately not a label: paths carry record ids.
        if count > 0:
            self.pii_fields.labels(_bounded(kind), _bounded(mode)).inc(count)

    def pii_page(self, path: str, scanned: bool) -> None:
        child = self._pii_scan[scanned]
        self._pending[child] = self._pending.get(child, 0) + 1

    def flush(self) -> None:
        """Hand what the request path counted to the metrics (call it on the event loop's thread).

        Never raises: it runs in the hub's poll and before a scrape, and a failed write (a full
        disk under the multiprocess folder) must cost those counts, not the poll or the scrape.
        """
        pending, self._pending = self._pending, {}
        try:
            for child, n in pending.items():
                child.inc(n)
            for tally in self._tallies:
                tally.flush()
        except Exception:
            log.exception("metrics: counts since the last flush were lost")

    def tamper(self, path: str, field_name: str) -> None:
        self.pii_tamper.inc()

    def store_op(self, seconds: float, ok: bool) -> None:
        self.store_latency.observe(seconds)
        if not ok:
            self.store_errors.inc()

    def reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None:
        self.attack_gauge.set(1 if active else 0)

    def exposure(self, entry: ExposureEntry) -> None:
        self.exposures.labels("true" if entry.seen else "false").inc()

    # ---- helpers for the other observers ----------------------------------------------------------

    def drop_counter(self, sink: str) -> Callable[[int], None]:
        """A callback a buffered sink calls with the number of records it had to drop."""
        name = _bounded(sink)
        child = self.dropped.labels(name)
        self.drop_counts.setdefault(name, 0)

        def dropped(n: int) -> None:
            child.inc(n)
            self.drop_counts[name] += n

        return dropped

    def set_bans_active(self, n: int) -> None:
        self.bans_active.set(n)

    def overload(self, totals: Mapping[tuple[str, str], int], lag: float) -> None:
        """The HTTP layer's refusal counts since start (read once a second, never per request)
        and its loop-lag peak: the counters get what was added since the last reading."""
        seen = self._refused_seen
        for key, n in totals.items():
            before = seen.get(key, 0)
            if n > before:
                self.refused.labels(*key).inc(n - before)
            seen[key] = n
        self.loop_lag.set(lag)

    def set_store_keys(self, n: int) -> None:
        self.store_keys.set(n)

    def render(self) -> bytes:
        """``flush``, then ``exposition``."""
        self.flush()
        return self.exposition()

    def exposition(self) -> bytes:
        """The exposition text: merged over every worker's files in multiprocess mode.

        It does not flush, so it may run on another thread (the admin API reads the
        multiprocess files off the loop, after a ``flush`` on it)."""
        return render(self.registry, self.multiproc)


def render(registry: CollectorRegistry | None = None, path: Path | None = None) -> bytes:
    """Scrape ``registry``, or, given a multiprocess folder, every process's files in it."""
    if path is not None:
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(path))  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry) if registry is not None else b""


def mark_process_dead(pid: int, path: Path | None = None) -> None:
    """For the supervisor, when a worker exits: its live gauges must stop counting."""
    from prometheus_client import multiprocess

    folder = path or multiproc_dir()
    if folder is not None:
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
