"""Smoke tests of the benchmark harness: its pieces work, so a benchmark run does not fail half-way.

Fast (a few seconds): the bench upstream's routes, one second of ``loadgen.py`` (closed,
open with a mix and a timeline), the probes, the nginx config, and the suite's and the
soak's reports on canned results.  ``slow``: a real ``suite.py --quick`` on two targets.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402
import soak  # noqa: E402
import suite  # noqa: E402
from upstream import CONTACT_PII, CONTACT_SIZE, PAGE_SIZE  # noqa: E402


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    port = R.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with _conn(port) as c:
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        break
            time.sleep(0.05)
        else:
            pytest.fail("bench upstream did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _conn(port: int) -> Iterator[http.client.HTTPConnection]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        yield c
    finally:
        c.close()


def _fetch(port: int, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
    with _conn(port) as c:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        resp = c.getresponse()
        return resp.status, resp.read()


def test_upstream_serves_the_three_workloads(upstream: int) -> None:
    status, body = _fetch(upstream, "GET", "/page")
    assert (status, len(body)) == (200, PAGE_SIZE)
    assert _fetch(upstream, "POST", "/login", "user=alice&password=right")[0] == 302
    assert _fetch(upstream, "POST", "/login", "user=user7&password=right-7")[0] == 302  # per-account password
    status, body = _fetch(upstream, "POST", "/login", "user=alice&password=wrong")
    assert status == 200 and b"Invalid user name or password" in body
    status, body = _fetch(upstream, "GET", "/contact")
    assert (status, len(body)) == (200, CONTACT_SIZE)
    assert all(value.encode() in body for value in CONTACT_PII)
    assert body.count(b'type="hidden"') >= 5


def test_probes_tell_a_pii_rewriting_target_from_a_plain_one(upstream: int) -> None:
    plain = R.probe(upstream, R.CONTACT)
    assert plain["ok"] and plain["pii_visible"] == 3, plain
    as_if_guard = R.probe(upstream, R.CONTACT, rewrites=True)  # the upstream does not tokenize: not ok
    assert not as_if_guard["ok"] and "expected 0" in as_if_guard["detail"]
    assert R.probe(upstream, R.WORKLOADS[0])["ok"]
    assert R.probe(upstream, R.WORKLOADS[1])["ok"]


def _loadgen(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), *args], capture_output=True, text=True, timeout=30, check=True
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_loadgen_closed_loop_one_second(upstream: int) -> None:
    data = _loadgen("--url", f"http://127.0.0.1:{upstream}/page", "--connections", "4", "--duration", "1")
    assert data["mode"] == "closed" and data["requests"] > 100
    assert data["errors"]["total"] == 0 and set(data["statuses"]) == {"200"}
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p99"]


def test_loadgen_varied_logins_all_succeed(upstream: int) -> None:
    data = _loadgen(
        "--url", f"http://127.0.0.1:{upstream}/login", "--method", "POST", "--vary", "--connections", "4",
        "--duration", "0.5",
    )
    assert data["requests"] > 50 and set(data["statuses"]) == {"302"}


def test_loadgen_open_loop_mix_and_timeline(upstream: int) -> None:
    data = _loadgen(
        "--url", f"http://127.0.0.1:{upstream}/", "--mix", "page=70,contact=10,login=10,attack=10",
        "--rate", "400", "--duration", "1", "--connections", "2", "--max-connections", "50", "--timeline", "0.5",
    )
    assert data["mode"] == "open" and data["errors"]["total"] == 0
    kinds = data["kinds"]
    assert set(kinds) == {"page", "contact", "login", "attack"}
    assert kinds["login"]["statuses"] == {"302": kinds["login"]["requests"]}
    assert kinds["attack"]["statuses"] == {"200": kinds["attack"]["requests"]}  # wrong passwords: the form again
    assert 0.6 < kinds["page"]["requests"] / data["requests"] < 0.8
    assert len(data["timeline"]) == 2 and sum(b["requests"] for b in data["timeline"]) == data["requests"]
    assert 2 <= data["peak_connections"] <= 50


def test_loadgen_rejects_a_bad_mix() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "--url", "http://127.0.0.1:1/", "--mix", "page=1,oops=2"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 2 and "KIND=WEIGHT" in out.stderr


def test_nginx_config_keeps_everything_in_its_prefix(tmp_path: Path) -> None:
    conf = R.write_nginx_config(tmp_path, 18082, 18081).read_text()
    assert "listen 127.0.0.1:18082" in conf and "server 127.0.0.1:18081;" in conf
    assert "keepalive 64;" in conf and 'proxy_set_header Connection "";' in conf
    for line in conf.splitlines():
        if line.strip().startswith(("pid ", "error_log ")) or "_temp_path" in line:
            assert str(tmp_path) in line, line


def test_guard_config_variants(tmp_path: Path) -> None:
    import yaml

    path, notes = R.write_guard_config(
        None, tmp_path, 1001, 1002, 1003, store="redis", redis_url="redis://127.0.0.1:1004/0", name="g2",
        extra={"admin": {"token": "t"}, "limits": {"max_connections": 1000}},
    )
    data = yaml.safe_load(path.read_text())
    assert path.name == "g2.yaml" and data["log"]["file"] == str(tmp_path / "g2.log")
    assert data["store"]["backend"] == "redis" and data["store"]["url"] == "redis://127.0.0.1:1004/0"
    assert data["admin"] == {"listen": "127.0.0.1:1002", "token": "t"}
    assert data["limits"]["max_connections"] == 1000 and "max_body_size" in data["limits"]  # merged, not replaced
    assert "store backend set to redis" in notes and len(data["secret_key"]) == 64  # Redis needs one


# --------------------------------------------------------------------------------------------
# reports on canned results


def _entry(rps: float, p99: float, *, aux: float | None = None, pii: bool = False) -> dict[str, Any]:
    probe = {"ok": True, "status": 200, "bytes": 8192, "detail": "200, 8192 B"}
    return {
        "status": "ok", "requests": int(rps * 10), "duration": 10.0, "rps": rps, "p50_ms": p99 / 4, "p99_ms": p99,
        "p99_9_ms": p99 * 2, "errors": 0, "error_detail": {}, "statuses": None, "loadgen_cpu_s": 5.0,
        "cpu_us_per_req": 1e6 / rps * 0.9, "upstream_cpu_us_per_req": 20.0, "aux_cpu_us_per_req": aux,
        "core0_util": 0.95, "loadgen_util": 0.3, "other_core0": 0.01, "other_core1": 0.08 if pii else 0.0,
        "steal_core0": 0.0, "attempt": 2 if pii else 1, "probe": probe, "probe_after": probe,
    }


def canned_suite() -> dict[str, Any]:
    speed = {
        "direct": 30000, "baseline": 7000, "nginx": 18000, "mitmproxy": 900, "guard": 6500,
        "guard-mem-2w": 6000, "guard-redis": 4000, "guard-redis-2w": 3800,
    }
    results: dict[str, Any] = {}
    for name, rps in speed.items():
        aux = 30.0 if "redis" in name else None
        results[name] = {
            "status": "ok",
            "notes": ["config from guard.yaml"] if name.startswith("guard") else [],
            "workloads": {wl.key: _entry(rps * (0.8 if wl.key == "login" else 1), 2.0, aux=aux, pii=wl.key == "contact")
                          for wl in suite.SUITE_WORKLOADS},
        }
    results["mitmproxy"] = {"status": "n/a", "reason": "n/a: mitmdump not found"}
    latency = {
        "status": "ok", "rate": 3250.0, "basis": "half of guard's GET /page max (6500 req/s)", "rounds": 5,
        "seconds_per_round": 2.0, "connections": 32,
        "targets": {
            n: {"status": "ok", "achieved_rps": 3250.0, "p50_ms": 0.2 + i / 10, "p99_ms": 1.0 + i / 5,
                "p99_9_ms": 3.0, "errors": 0, "round_p99_ms": [1.0, 1.2], "other_core0": 0.0, "other_core1": 0.0,
                **({"p99_added_ms": i / 5, "p50_added_ms": i / 10} if i else {"p99_round_spread_ms": 0.2})}
            for i, n in enumerate(suite.LATENCY_TARGETS)
        },
    }
    components = {
        "iplists": {"status": "ok", "other_core0": 0.0, "data": {
            "count": 1_000_000, "ranges_v4": 700_000, "ranges_v6": 200_000, "load_s": 1.5, "memory_retained_mb": 60.0,
            "memory_peak_mb": 70.0, "lookup_median_us": 1.5, "lookup_p99_us": 4.0, "lookups": 100_000}},
        "html": {"status": "ok", "other_core0": 0.02, "data": {
            "mbps": {"form": 58.0, "big": 110.0, "plain": 125.0, "contact": 60.0}, "page_100k_ms": 0.9,
            "contact_pii_left": 0}},
        "decisions": {"status": "ok", "other_core0": 0.0, "data": {
            "memory": {"decisions": 20000, "cpu_us_per_decision": 95.0, "wall_us_per_decision": 96.0},
            "redis": {"decisions": 4600, "cpu_us_per_decision": 380.0, "wall_us_per_decision": 520.0,
                      "round_trips_per_decision": 2.0}}},
    }
    ratio = R.ratios(results, suite.SUITE_WORKLOADS)
    env = {"date": "2025-01-01T00:00:00+00:00", "cpu_model": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11",
           "aiohttp": "3", "uvloop": "0.2", "mitmproxy": "11", "nginx": "1.22.1", "redis": "7.0.15",
           "loadgen": "wrk 4.1", "pinning": "servers on core 0, load generator on core 1"}
    return {
        "environment": env,
        "config": {"duration": 10.0, "warmup": 2.0, "connections": 32, "quick": False},
        "results": results, "ratios": ratio, "latency": latency, "components": components,
        "checks": R.check_targets(ratio, latency) + suite.component_checks(components),
        "patience_s": 3.0, "elapsed_s": 400.0,
    }


def test_suite_report_prints_one_table_with_verdicts() -> None:
    data = canned_suite()
    text = suite.report(data)
    for label in ("direct", "baseline", "nginx", "guard mem 1w", "guard mem 2w", "guard redis 1w", "guard redis 2w"):
        assert sum(bool(re.match(rf"{label} +(GET|POST) /", line)) for line in text.splitlines()) == 3, label
    assert "mitmproxy       n/a: mitmdump not found" in text
    assert "Test CPU, 2 cores, Linux 6.1" in text and "nginx 1.22.1" in text and "redis-server 7.0.15" in text
    assert "(try 2)" in text and "WARNING: other processes took up to 8%" in text
    assert "+30" in text  # Redis's CPU beside the guard's
    assert "[PASS] guard >= 0.9x baseline throughput" in text  # 6500 / 7000
    assert "[n/a ] guard >= 7x mitmproxy throughput (GET /page)" in text
    assert "[FAIL] Redis round trips per forwarded login decision == 1" in text
    assert "[PASS] list of 1M CIDRs: lookup (median) <= 10 us" in text
    assert "[PASS] HTML rewrite >= 50 MB/s" in text
    assert "8 PASS, 1 FAIL, 2 n/a" in text


def test_suite_readme_table_is_markdown() -> None:
    md = suite.readme_table(canned_suite())
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| target | GET /page req/s")
    assert any(r.startswith("| guard (memory store, 1 worker) | 6,500 |") for r in rows)
    assert any(r.startswith("| **guard/baseline** | 0.93x") for r in rows)
    assert "guard p99 added at half its max rate: +0.60 ms" in md


def test_suite_component_checks_without_components() -> None:
    assert {c["result"] for c in suite.component_checks({})} == {"n/a"}


def test_soak_report_on_canned_results() -> None:
    phase = {
        "target_rate": 1000.0, "rps": 1000.0, "requests": 10000, "p50_ms": 0.5, "p99_ms": 3.0, "max_ms": 9.0,
        "statuses": {"200": 9000, "302": 1000}, "errors": {"connect": 0, "reset": 0, "timeout": 0, "5xx": 0, "503": 0},
        "kinds": {"page": {"requests": 9000, "statuses": {"200": 9000}, "p99_ms": 3.0}},
        "peak_connections": 40, "other_core0": 0.0, "other_core1": 0.01, "rss_mb": [80.0, 82.0], "fds": [20, 60],
        "timeline": [{"t": 0.0, "requests": 1000, "p50_ms": 0.5, "p99_ms": 3.0, "statuses": {"200": 1000}}],
    }
    data = {
        "date": "2025-01-01T00:00:00+00:00",
        "environment": {"cpu_model": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11", "aiohttp": "3",
                        "uvloop": "0.2", "pinning": "pinned"},
        "config": {"minutes": 10.0, "store": "memory", "workers": 1, "mix_legit": soak.MIX_LEGIT,
                   "mix_soak": soak.MIX_SOAK},
        "capacity": {"rps": 2000.0},
        "overload": {"before": phase, "overload": {**phase, "errors": {**phase["errors"], "503": 7}}, "after": phase,
                     "service_p99_ms": [100.0, 120.0, 110.0]},
        "soak": {**phase, "bucket_s": 60.0, "p99_per_bucket_ms": [3.0, 3.1],
                 "fds_before": {"client": 0, "upstream": 12, "listen": 2, "file": 9},
                 "fds_after": {"client": 0, "upstream": 40, "listen": 2, "file": 9}},
        "metrics": {'guard_requests_total{action="pass",status_class="2xx"}': 100.0},
        "notes": ["config from guard.yaml"],
        "checks": [soak._check("soak: fds once idle, upstream pool aside: after = before (+/-5)", 0, "", True)],
        "guard_alive": True, "elapsed_s": 700.0,
    }
    text = soak.report(data)
    assert "capacity  2000 req/s" in text
    assert "2x overload" in text and "503 7" in text
    assert "soak fds once idle: before upstream 12, listen 2, file 9; after upstream 40, listen 2, file 9" in text
    assert "[PASS] soak: fds once idle, upstream pool aside: after = before (+/-5)" in text
    assert "overload service p99 ms per second:  100 120 110" in text


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_suite_quick_on_direct_and_baseline(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--quick", "--targets", "direct,baseline", "--no-components",
         "--duration", "1", "--rounds", "1", "--patience", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    for name in ("direct", "baseline"):
        assert data["results"][name]["status"] == "ok"
        for wl in ("page", "login", "contact"):
            entry = data["results"][name]["workloads"][wl]
            assert entry["status"] == "ok" and entry["rps"] > 0 and entry["probe"]["ok"], entry
    assert "direct          GET /page" in proc.stdout and "targets" in proc.stdout


def test_listening_sockets_counts_each_reuseport_listener() -> None:
    """What ``wait_workers`` waits on: one listening socket per worker on the shared port."""
    import socket

    socks = []
    try:
        first = socket.socket()
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        socks.append(first)
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            socks.append(s)
        assert R.listening_sockets(port) == 0  # bound, not listening yet
        for i, s in enumerate(socks, 1):
            s.listen()
            assert R.listening_sockets(port) == i
    finally:
        for s in socks:
            s.close()


def test_bench_store_reports_a_full_store(tmp_path: Path) -> None:
    # A subprocess: the harness freezes the heap and sets the worker's collector thresholds.
    out = tmp_path / "store.json"
    subprocess.run(
        [sys.executable, str(BENCH / "bench_store.py"), "--batches", "3000", "--max-keys", "2000",
         "--json", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    got = json.loads(out.read_text())
    assert got["keys"] == 2000          # far more keys were made: the cap held, by eviction
    assert got["batches"] == 3000 and got["mean_us_per_batch"] > 0
    assert got["stalls"] == len(got["stall_list"]) or got["stalls"] > 50
    assert got["full_collection_ms"] >= 0 and got["peak_rss_mb"] > 0


def test_bench_decisions_replays_untimed_for_an_instruction_counter() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_decisions.py"), "--replay", "50"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert done.stdout == ""     # nothing timed, nothing printed: the counter sees the decisions alone


def test_instructions_arithmetic_and_callgrind_output() -> None:
    import instructions as ins

    # run A served 100 requests in 10 s; run B served none; run C idled 20 s and ran 2 M more
    c = ins.Count("guard", "/page", 100, with_requests=151_000_000, bare=40_000_000, idle=42_000_000,
                  idle_s=20.0, requests_s=10.0)
    assert c.idle_per_s == 100_000.0
    assert c.per_request == (151_000_000 - 40_000_000 - 1_000_000) / 100   # the idle timers taken out
    with pytest.raises(ValueError):
        ins.per_request(1, 1, 0.0, 0.0, 0)
    log = "==7646== Events    : Ir\n==7646== Collected : 4665068552\n==7646==\n==7646== I   refs:      4,665,068,552\n"
    assert ins.refs(log) == 4_665_068_552
    with pytest.raises(RuntimeError):
        ins.refs("Killed\n")
    assert "1.50x the instructions" in ins.report([
        ins.Count("baseline", "/page", 10, 30, 10, 10, 1.0, 1.0), ins.Count("guard", "/page", 10, 40, 10, 10, 1.0, 1.0)])


@pytest.mark.slow
def test_instructions_counts_the_baseline_under_callgrind(tmp_path: Path) -> None:
    out = tmp_path / "ins.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "instructions.py"), "--targets", "baseline", "--requests", "20",
         "--idle", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (count,) = json.loads(out.read_text())
    assert count["target"] == "baseline" and count["requests"] == 20 and count["requests_s"] > 0
    # a proxied GET is some hundreds of thousands of instructions (472 k at 1,000 requests)
    assert 50_000 < count["per_request"] < 5_000_000, count
    assert count["with_requests"] > count["bare"] > 0
