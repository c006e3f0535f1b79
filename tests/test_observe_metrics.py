"""Metrics: names and labels as scraped, bounded cardinality, multiprocess aggregation across processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from guard.engine.decision import Action
from guard.observe import metrics as metrics_module
from guard.observe.metrics import OVERHEAD_BUCKETS, UPSTREAM_BUCKETS, Metrics, render
from tests.observe_fixtures import event

IP = re.compile(r"\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_parses_and_counts() -> None:
    m = Metrics(multiproc=False)
    for _ in range(3):
        m.request(event(action=Action.BLOCK, rules=("admin-path",), status=403, path="/admin/1"))
    m.request(event(login="login", outcome="failure", status=200))
    m.request(event(login="login", action=Action.BLOCK, rules=("many-users",), status=403))
    m.challenge("issued", "email")
    m.challenge("bogus-event", "email")
    m.pii("/account/123", "phone", "tokenize", 2)
    m.tamper("/account/123", "uid")
    m.pii_page("/account/123", True)
    m.pii_page("/help", False)
    m.pii_page("/about", False)
    m.store_op(0.002, True)
    m.store_op(0.3, False)
    m.reload(True)
    m.reload(False)
    m.attack(True, 50, 12.0, 0.5)
    m.known_rules = frozenset({"many-users"})
    m.ban("ip:203.0.113.9", 600, "many-users")
    m.ban("ip:203.0.113.9", 600, "manual: stuffing from 203.0.113.9")   # free text never becomes a label
    m.ban("ip:203.0.113.9", 0, "unban", removed=True)
    m.set_bans_active(4)
    s = samples(m.render().decode())
    assert s[("guard_requests_total", (("action", "block"), ("status_class", "4xx")))] == 4
    assert s[("guard_requests_total", (("action", "pass"), ("status_class", "2xx")))] == 1
    assert s[("guard_rule_hits_total", (("mode", "enforce"), ("rule", "admin-path")))] == 3
    assert s[("guard_login_attempts_total", (("endpoint", "login"), ("outcome", "failure")))] == 1
    assert s[("guard_login_attempts_total", (("endpoint", "login"), ("outcome", "blocked")))] == 1
    assert s[("guard_challenges_total", (("channel", "email"), ("event", "issued")))] == 1
    assert s[("guard_challenges_total", (("channel", "email"), ("event", "other")))] == 1
    assert s[("guard_pii_fields_total", (("kind", "phone"), ("mode", "tokenize")))] == 2
    assert s[("guard_pii_tamper_total", ())] == 1
    assert s[("guard_pii_pages_total", (("scan", "full"),))] == 1
    assert s[("guard_pii_pages_total", (("scan", "unread"),))] == 2
    assert s[("guard_store_errors_total", ())] == 1
    assert s[("guard_store_latency_seconds_count", ())] == 2
    assert s[("guard_rule_reloads_total", (("result", "error"),))] == 1
    assert s[("guard_attack_in_progress", ())] == 1
    assert s[("guard_bans_total", (("reason", "many-users"),))] == 1
    assert s[("guard_bans_total", (("reason", "manual"),))] == 1
    assert s[("guard_unbans_total", ())] == 1
    assert s[("guard_bans_active", ())] == 4
    assert s[("guard_overhead_seconds_count", ())] == 5
    assert s[("guard_upstream_latency_seconds_count", ())] == 1   # blocked requests never reached it
    # sub-millisecond buckets exist for the guard's own overhead
    assert ("guard_overhead_seconds_bucket", (("le", "5e-05"),)) in s


def test_labels_stay_bounded_under_a_botnet() -> None:
    m = Metrics(multiproc=False)
    for i in range(5000):
        m.request(event(ip=f"10.{i // 250}.{i % 250}.1", action=Action.BLOCK, rules=("many-users",),
                        status=403, path=f"/user/{i}", login="login", user_key=f"acct-hash-{i}"))
    text = m.render().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for value in s.labels.values():
                assert not IP.fullmatch(value), (s.name, value)
                assert "acct-hash" not in value and "/" not in value, (s.name, value)
    assert len([ln for ln in text.splitlines() if ln.startswith("guard_requests_total")]) == 1


CHILD = """
import sys
from guard.observe.metrics import Metrics
from tests.observe_fixtures import event
from guard.engine.decision import Action
m = Metrics()
assert m.multiproc is not None
for _ in range(int(sys.argv[1])):
    m.request(event(action=Action.BLOCK, rules=("admin-path",), status=403))
m.set_bans_active(int(sys.argv[2]))
m.attack(True, 1, 1, 1)
m.flush()   # what a worker's Observability does every second and at close
"""


def test_multiprocess_two_writers_one_scrape(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    for n, bans in ((7, 3), (5, 3)):
        subprocess.run([sys.executable, "-c", CHILD, str(n), str(bans)], env=env, cwd=root, check=True,
                       timeout=30)
    assert len(list(tmp_path.glob("*.db"))) >= 2
    s = samples(render(path=tmp_path).decode())
    assert s[("guard_requests_total", (("action", "block"), ("status_class", "4xx")))] == 12
    assert s[("guard_rule_hits_total", (("mode", "enforce"), ("rule", "admin-path")))] == 12
    assert s[("guard_overhead_seconds_count", ())] == 12
    # livemax gauges: the writers have exited, so their live gauges no longer count... unless still alive;
    # the files stay until the supervisor marks the process dead.  Either way the value is never summed.
    gauges = [v for (name, _), v in s.items() if name == "guard_bans_active"]
    assert all(v <= 3 for v in gauges)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(OVERHEAD_BUCKETS + UPSTREAM_BUCKETS),   # the bounds themselves: "le" is inclusive
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
), max_size=60))
def test_deferred_histograms_scrape_exactly_as_observed_ones(values: list[float]) -> None:
    """The request path counts into plain numbers; after a flush the scrape is the one that
    observing each value into prometheus-client's histograms gives, bucket for bucket."""
    deferred = Metrics(multiproc=False)
    direct = Metrics(multiproc=False)
    for v in values:
        deferred.request(event(upstream_s=v, overhead_s=v / 1000))
        direct.requests.labels("pass", "2xx").inc()
        direct.upstream_latency.observe(v)
        direct.overhead.observe(v / 1000)
    assert deferred._tallies, "the deferred path is in use with this prometheus-client"
    got, want = samples(deferred.render().decode()), samples(direct.render().decode())
    keys = [k for k in want if k[0].startswith(("guard_upstream_latency", "guard_overhead", "guard_requests"))]
    for k in keys:
        if k[0].endswith("_sum"):
            assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
        elif not k[0].endswith("_created"):
            assert got.get(k, 0.0) == want[k], k


def test_counts_wait_for_a_flush_and_a_scrape_flushes() -> None:
    m = Metrics(multiproc=False)   # (a multiprocess folder here would switch the value class for the process)
    for _ in range(3):
        m.request(event(action=Action.BLOCK, rules=("admin-path",), status=403))
    m.pii_page("/help", False)
    before = samples(m.exposition().decode())
    assert before.get(("guard_requests_total", (("action", "block"), ("status_class", "4xx"))), 0) == 0
    m.flush()
    m.flush()   # nothing new: adds nothing
    after = samples(m.exposition().decode())
    assert after[("guard_requests_total", (("action", "block"), ("status_class", "4xx")))] == 3
    assert after[("guard_rule_hits_total", (("mode", "enforce"), ("rule", "admin-path")))] == 3
    assert after[("guard_pii_pages_total", (("scan", "unread"),))] == 1
    assert after[("guard_overhead_seconds_count", ())] == 3
    m.request(event())
    assert samples(m.render().decode())[("guard_requests_total", (("action", "pass"), ("status_class", "2xx")))] == 1


def test_without_the_histogram_internals_each_value_is_observed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prometheus-client without ``_buckets``/``_sum`` gets plain ``observe`` calls, never wrong counts."""
    monkeypatch.setattr(metrics_module._Tally, "usable", staticmethod(lambda hist: False))
    m = Metrics(multiproc=False)
    assert m._tallies == ()
    m.request(event(upstream_s=0.02, overhead_s=0.0003))
    s = samples(m.exposition().decode())   # no flush needed for the histograms
    assert s[("guard_upstream_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("guard_overhead_seconds_bucket", (("le", "0.0005"),))] == 1


def test_a_failed_flush_loses_those_counts_and_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(multiproc=False)
    m.request(event())

    class Broken:
        def inc(self, n: int) -> None:
            raise OSError(28, "No space left on device")

    m._pending[Broken()] = 1
    m.flush()   # the poll and the scrape go on
    assert "counts since the last flush were lost" in caplog.text
    m.request(event())
    assert samples(m.render().decode())[("guard_requests_total", (("action", "pass"), ("status_class", "2xx")))] >= 1
