"""Load and soak: the guard at twice what it can sustain, then for minutes at half of it under attack.

    .venv/bin/python bench/soak.py                  # ~12 minutes: 10-minute soak
    .venv/bin/python bench/soak.py --minutes 1      # ~2.5 minutes
    .venv/bin/python bench/soak.py --json soak.json

One guard (shipped config, memory store, one worker; ``--store redis`` and ``--workers``
for the others) in front of the bench upstream, pinned like ``run.py`` (servers on core
0, ``loadgen.py`` on core 1).  Traffic is a blend (``loadgen.py --mix``): pass-through
pages, the PII contact page (no cookies: every view is a new browser, so each one puts
fresh tokens in the vault), good logins through the trusted hop from a population of
``--population`` returning accounts (20,000), each from its own address.

1. Capacity: closed loop, 32 connections, the legitimate blend: C req/s.
2. Overload (a): open loop at 0.5 C for 10 s (reference), then 2 C for ``--overload-seconds``
   (clients keep arriving: a due request with no idle connection opens a new one, up to
   ``--overload-connections``), then 0.5 C for 15 s.  The guard runs with
   ``limits.max_connections`` below that client count (``--guard-max-connections``,
   default 1000), so its admission limit, not the load generator, bounds its queue:
   beyond it the guard answers 503 and closes.  Its RSS and open fds are sampled twice
   a second.  PASS when:
   - RSS levels off: growth over the second half of the overload < 10%;
   - it keeps serving: non-503 answers/s >= 0.8 C (no collapse);
   - its queue is bounded: the service time (request written -> response) p99 per
     second, in the last third of the overload, <= 1.5x the middle third's;
   - no connection is reset or refused and no 5xx other than 503 is sent (requests
     still waiting for a client connection when the phase ends are counted and shown,
     not judged: that queue is the clients');
   - ``/healthz`` on the admin listener answers within 1 s right after;
   - it recovers: every second of the last 10 s at 0.5 C has p99 <= max(2x the
     reference p99, reference + 5 ms), with no failures.
3. Soak (b): ``--minutes`` at 0.5 C with attack traffic mixed in (credential stuffing:
   failing logins for ever-new victims from a rotating botnet through X-Forwarded-For).
   PASS when RSS grows < 10% between the end of minute 1 (or the first quarter of a
   shorter soak) and the end, the open fds once idle after the soak equal those once
   idle before it (+/- 5), every minute's p99 is within max(2x the median minute's,
   median + 5 ms), and no legitimate request failed (5xx, 503, reset, timeout).

Other processes on the machine change the latency figures: each phase reports how much
CPU others took on the two cores (``other %``), as ``run.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402

MIX_LEGIT = "page=80,contact=10,login=10"
MIX_SOAK = "page=70,contact=10,login=10,attack=10"
LEGIT_KINDS = ("page", "contact", "login")
GROWTH_LIMIT = 0.10
FD_SLACK = 5
UPSTREAM_POOL = 256  # limits.upstream_connections as shipped (default of the config model)


# --------------------------------------------------------------------------------------------
# what the guard holds


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a multi-worker guard)."""
    table = R._proc_table()
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        if p in table and p not in out:
            out.append(p)
            frontier.extend(c for c, (ppid, _) in table.items() if ppid == p)
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def _tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket on the machine."""
    out: dict[int, tuple[int, int, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3])
    return out


def fd_kinds(pids: list[int], port: int, up_port: int) -> dict[str, int]:
    """The guard's open fds by kind: client connections, upstream pool, listeners, other sockets, files."""
    kinds = dict.fromkeys(("client", "upstream", "listen", "other_socket", "file"), 0)
    tcp = _tcp_sockets()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if not link.startswith("socket:["):
                        kinds["file"] += 1
                        continue
                    local, remote, state = tcp.get(int(link[8:-1]), (0, 0, ""))
                    if state == "0A":
                        kinds["listen"] += 1
                    elif remote == up_port:
                        kinds["upstream"] += 1
                    elif local == port:
                        kinds["client"] += 1
                    else:
                        kinds["other_socket"] += 1
    return kinds


class Sampler:
    """RSS, open fds and interference, sampled while a load phase runs."""

    def __init__(self, pid: int, other_pids: list[int], port: int = 0, up_port: int = 0) -> None:
        self.pid, self.other_pids, self.port, self.up_port = pid, other_pids, port, up_port
        self.samples: list[dict[str, float]] = []
        self.t0 = time.monotonic()

    def sample(self) -> dict[str, float]:
        pids = tree(self.pid)
        s = {"t": time.monotonic() - self.t0, "rss_mb": rss_mb(pids), "fds": open_fds(pids)}
        self.samples.append(s)
        return s


def settle_fds(pid: int, port: int, up_port: int, timeout: float = 20.0) -> dict[str, int]:
    """The guard's fds by kind once no client connection is left (closed ones take a moment to go)."""
    last: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = fd_kinds(tree(pid), port, up_port)
        if now == last and now["client"] == 0:
            break
        last = now
        time.sleep(1.0)
    return last


def healthz(admin_port: int) -> float | None:
    """Seconds the admin /healthz took to answer 200, or None."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as resp:
            return time.monotonic() - t0 if resp.status == 200 else None
    except OSError:
        return None


def scrape(admin_port: int, token: str) -> dict[str, float]:
    """The guard's own counters from /metrics: requests by action and status class, bans, store
    errors, load shed by stage and reason, and the memory store's keys (what its RSS holds)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]
    for line in text.splitlines():
        if line.startswith(("guard_requests_total{", "guard_bans_total{", "guard_store_errors_total",
                            "guard_overload_refused_total{", "guard_store_keys ")):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# load


def loadgen(
    pinning: R.Pinning,
    port: int,
    *,
    mix: str,
    duration: float,
    rate: float = 0.0,
    connections: int = 32,
    max_connections: int = 0,
    warmup: float = 0.0,
    timeline: float = 0.0,
    sampler: Sampler | None = None,
    every: float = 0.5,
    population: int = 20_000,
) -> dict[str, Any]:
    """Run ``loadgen.py`` on the load generator's core; sample the guard meanwhile."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--url", f"http://127.0.0.1:{port}/", "--mix", mix]
    cmd += ["--population", str(population)]
    cmd += ["--duration", f"{duration:g}", "--connections", str(connections), "--warmup", f"{warmup:g}"]
    if rate:
        cmd += ["--rate", f"{rate:.1f}"]
    if max_connections:
        cmd += ["--max-connections", str(max_connections)]
    if timeline:
        cmd += ["--timeline", f"{timeline:g}"]
    cores0, cpu0, own0 = R.CoreTimes.now(), R.children_cpu(), time.process_time()
    ours0 = sum(R.cpu_seconds(p) for p in [*sampler.other_pids, sampler.pid]) if sampler else 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=pinning.preexec(R.LOADGEN_CORE))
        try:
            deadline = time.monotonic() + duration + warmup + 120
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("loadgen.py did not finish")
                if sampler is not None:
                    sampler.sample()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=every)   # the sampling period, cut short when the run ends
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen.py exited {proc.returncode}: {stderr.strip()[-400:]}")
    data: dict[str, Any] = json.loads(stdout)
    # the load generator's core also runs this script (sampling /proc): both are ours
    cores1, lg_cpu = R.CoreTimes.now(), R.children_cpu() - cpu0 + time.process_time() - own0
    ours1 = sum(R.cpu_seconds(p) for p in [*sampler.other_pids, sampler.pid]) if sampler else 0.0
    data["other_core0"] = cores0.other(cores1, R.SERVER_CORE, ours1 - ours0)
    data["other_core1"] = cores0.other(cores1, R.LOADGEN_CORE, lg_cpu)
    return data


def _errors(data: dict[str, Any], kinds: tuple[str, ...] | None = None) -> dict[str, int]:
    """Failures: resets, timeouts and 5xx other than 503 (which is shedding), over ``kinds``."""
    e = data["errors"]
    groups = [data["kinds"][k] for k in (kinds or data["kinds"]) if k in data["kinds"]]
    statuses: dict[str, int] = {}
    for g in groups:
        for code, n in g["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    return {
        "connect": e["connect"],
        "reset": statuses.get("0", 0),
        "timeout": e["timeout"],
        "5xx": sum(n for code, n in statuses.items() if code.startswith("5") and code != "503"),
        "503": statuses.get("503", 0),
    }


def _p99(group: dict[str, Any]) -> float:
    return float(group["latency_ms"]["p99"])


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="soak length (default 10)")
    p.add_argument("--overload-seconds", type=float, default=20.0, help="seconds at 2x capacity (default 20)")
    p.add_argument("--overload-connections", type=int, default=2000, help="client connections at most (2000)")
    p.add_argument(
        "--guard-max-connections",
        type=int,
        default=1000,
        help="the guard's limits.max_connections, below --overload-connections so that it sheds (1000; 0: shipped)",
    )
    p.add_argument(
        "--store-max-keys",
        type=int,
        default=0,
        help="the memory store's store.max_keys (0: shipped, 1,000,000): a lower cap shows memory level off",
    )
    p.add_argument("--population", type=int, default=20_000, help="returning accounts of the good logins")
    p.add_argument("--mix", default=MIX_LEGIT, help=f"blend for capacity and overload ({MIX_LEGIT})")
    p.add_argument("--soak-mix", default=MIX_SOAK, help=f"blend of the soak ({MIX_SOAK})")
    p.add_argument("--store", choices=("memory", "redis"), default="memory")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--skip-overload", action="store_true")
    p.add_argument("--skip-soak", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--patience", type=float, default=30.0, help="seconds to wait for a quiet machine")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.overload_seconds <= 0 or args.workers < 1:
        p.error("--minutes, --overload-seconds > 0; --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    pinning = R.Pinning()
    if pinning.enabled:
        os.sched_setaffinity(0, {R.LOADGEN_CORE})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="loginguard-soak-"))
    procs = R.Processes(tmp, pinning)
    token = secrets.token_hex(16)
    data: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": R.environment(R.PyLoadGen(pinning, tmp), pinning),
        "config": {
            "minutes": args.minutes,
            "overload_seconds": args.overload_seconds,
            "overload_connections": args.overload_connections,
            "guard_max_connections": args.guard_max_connections or "shipped",
            "store": args.store,
            "store_max_keys": args.store_max_keys or "shipped",
            "workers": args.workers,
            "mix_legit": args.mix,
            "mix_soak": args.soak_mix,
            "population": args.population,
        },
    }
    checks: list[dict[str, Any]] = []
    patience = R.Patience(args.patience)
    try:
        guard, admin, port, aux, up_port = start(args, tmp, procs, token)
        data["notes"] = guard[1]
        gpid = guard[0].pid

        def new_sampler() -> Sampler:
            return Sampler(gpid, aux, port, up_port)

        print("  capacity (closed loop) ...", file=sys.stderr, flush=True)
        patience.wait_quiet()
        cap = loadgen(
            pinning, port, mix=args.mix, duration=6, warmup=1, sampler=new_sampler(), population=args.population
        )
        capacity = cap["rps"]
        data["capacity"] = _phase_summary(cap, None)
        print(f"    {capacity:.0f} req/s", file=sys.stderr)
        if not args.skip_overload:
            data["overload"] = overload(args, pinning, port, admin, capacity, new_sampler, patience)
            checks += data["overload"].pop("checks")
        if not args.skip_soak:
            data["soak"] = soak(args, pinning, port, capacity, new_sampler, patience)
            checks += data["soak"].pop("checks")
        data["guard_alive"] = guard[0].alive()
        data["metrics"] = scrape(admin, token)
    finally:
        R.release(procs, tmp, args.keep_tmp)
    data["checks"] = checks
    data["elapsed_s"] = time.monotonic() - started
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if all(c["result"] != "FAIL" for c in checks) else 1


def start(
    args: argparse.Namespace, tmp: Path, procs: R.Processes, token: str
) -> tuple[tuple[R.Spawned, list[str]], int, int, list[int], int]:
    """Upstream, (Redis,) guard: the guard and its notes, admin port, public port, other pids, upstream port."""
    up_port = R.free_port()
    upstream = procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)])
    err = R.wait_http(f"http://127.0.0.1:{up_port}/health", upstream, 15)
    if err:
        raise SystemExit(f"upstream did not start: {err}")
    others = [upstream.pid]
    redis_url = None
    if args.store == "redis":
        import suite

        redis, redis_port = suite.start_redis(procs, tmp)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        others.append(redis.pid)
    port, admin = R.free_port(), R.free_port()
    extra: dict[str, Any] = {"admin": {"token": token}}
    if args.guard_max_connections:
        extra["limits"] = {"max_connections": args.guard_max_connections}
    if args.store_max_keys:
        extra["store"] = {"max_keys": args.store_max_keys}
    cfg, notes = R.write_guard_config(
        None, tmp, port, admin, up_port, store=args.store, redis_url=redis_url, extra=extra
    )
    if args.store_max_keys:
        notes.append(f"store.max_keys: {args.store_max_keys} (shipped: 1,000,000)")
    if args.guard_max_connections:
        notes.append(
            f"limits.max_connections: {args.guard_max_connections} (below the {args.overload_connections} "
            "clients of the overload, so the guard's admission limit is what bounds its queue)"
        )
    env = R.guard_env()
    cmd = [sys.executable, "-m", "guard", "run", "-c", str(cfg)]
    if args.workers > 1:
        cmd += ["--workers", str(args.workers)] + (["--allow-split-state"] if args.store == "memory" else [])
    guard = procs.start("guard", cmd, env)
    err = R.wait_http(f"http://127.0.0.1:{admin}/healthz", guard, 30)
    if err:
        raise SystemExit(f"guard did not start: {err}\n{guard.log_tail()}")
    if args.workers > 1 and (err := R.wait_workers(guard, args.workers, port, 20)):
        raise SystemExit(err)
    notes.append("admin token set (to read /metrics)")
    import yaml

    limits = (yaml.safe_load(cfg.read_text()) or {}).get("limits") or {}
    args.pool_cap = int(limits.get("upstream_connections", UPSTREAM_POOL)) * args.workers
    args.admission = int(limits.get("max_connections", 10_000)) * args.workers
    return (guard, notes), admin, port, others, up_port


def _phase_summary(d: dict[str, Any], sampler: Sampler | None) -> dict[str, Any]:
    out = {
        "target_rate": d.get("target_rate"),
        "rps": d["rps"],
        "requests": d["requests"],
        "p50_ms": d["latency_ms"]["p50"],
        "p99_ms": d["latency_ms"]["p99"],
        "max_ms": d["latency_ms"]["max"],
        "statuses": d["statuses"],
        "errors": _errors(d),
        "kinds": {k: {"requests": g["requests"], "statuses": g["statuses"], "p99_ms": _p99(g)}
                  for k, g in d.get("kinds", {}).items()},
        "peak_connections": d.get("peak_connections"),
        "max_backlog": d.get("max_backlog"),
        "other_core0": d.get("other_core0"),
        "other_core1": d.get("other_core1"),
    }
    if sampler is not None and sampler.samples:
        out["rss_mb"] = [round(s["rss_mb"], 1) for s in sampler.samples]
        out["fds"] = [s["fds"] for s in sampler.samples]
    if "timeline" in d:
        out["timeline"] = [
            {"t": b["t"], "requests": b["requests"], "p50_ms": b["latency_ms"]["p50"], "p99_ms": b["latency_ms"]["p99"],
             "statuses": b["statuses"]}
            for b in d["timeline"]
        ]
    return out


def _check(target: str, value: float | None, unit: str, ok: bool | None) -> dict[str, Any]:
    result = "n/a" if ok is None or value is None else ("PASS" if ok else "FAIL")
    return {"target": target, "value": value, "unit": unit, "result": result}


def overload(
    args: argparse.Namespace,
    pinning: R.Pinning,
    port: int,
    admin: int,
    capacity: float,
    new_sampler: Any,
    patience: R.Patience,
) -> dict[str, Any]:
    half, double = capacity / 2, capacity * 2
    kw = {"mix": args.mix, "connections": 32, "max_connections": args.overload_connections, "timeline": 1.0,
          "population": args.population}
    print(f"  overload: {half:.0f} req/s, then {double:.0f}, then {half:.0f} ...", file=sys.stderr, flush=True)
    patience.wait_quiet()
    s_before = new_sampler()
    before = loadgen(pinning, port, rate=half, duration=10, warmup=1, sampler=s_before, **kw)
    s_over = new_sampler()
    over = loadgen(pinning, port, rate=double, duration=args.overload_seconds, sampler=s_over, **kw)
    health_after = healthz(admin)
    s_after = new_sampler()
    after = loadgen(pinning, port, rate=half, duration=15, sampler=s_after, **kw)
    out = {
        "before": _phase_summary(before, s_before),
        "overload": _phase_summary(over, s_over),
        "after": _phase_summary(after, s_after),
        "healthz_after_overload_s": health_after,
    }
    checks = []
    rss_before = max(s["rss_mb"] for s in s_before.samples) if s_before.samples else None
    samples = s_over.samples
    mid = len(samples) // 2
    if samples and mid:
        first, second = max(s["rss_mb"] for s in samples[:mid]), max(s["rss_mb"] for s in samples[mid:])
        growth = second / first - 1
        out["rss_peak_mb"], out["rss_before_mb"] = max(first, second), rss_before
        checks.append(_check("overload: RSS levels off (growth over its 2nd half < 10%)", growth * 100, " %",
                             growth < GROWTH_LIMIT))
    statuses = over["statuses"]
    good = sum(n for code, n in statuses.items() if code[0] in "234")
    goodput = good / over["duration"] / capacity if capacity and over["duration"] else None
    out["goodput_x"] = goodput
    checks.append(_check("overload: keeps serving (non-503 answers/s >= 0.8x capacity)", goodput, "x",
                         goodput is not None and goodput >= 0.8))
    # The guard's queue: a request waits at most for the connections the guard admitted
    # (limits.max_connections) to be served before it, so its service time (written ->
    # answered) stays under max_connections / capacity -- twice that, for slack.  Longer
    # means requests wait where no limit applies (the kernel's accept queue, say).
    out["service_p99_ms"] = [b["service_ms"]["p99"] for b in over.get("timeline", []) if b["requests"]]
    bound_s = 2 * args.admission / capacity if capacity else None
    svc_p99 = over["service_ms"]["p99"] / 1000
    out["service_bound_s"] = bound_s
    checks.append(_check(f"overload: queue bounded (service p99 <= 2 x max_connections / capacity = "
                         f"{_fmt(bound_s, '.1f')} s)", svc_p99, " s", bound_s is not None and svc_p99 <= bound_s))
    errs = _errors(over)
    due = over["requests"] + errs["timeout"] + errs["connect"]
    failed = errs["connect"] + errs["reset"] + errs["5xx"]
    out["overload_errors"] = failed
    out["overload_unanswered"] = errs["timeout"]
    checks.append(_check("overload: no resets, refused connects or 5xx other than 503", failed, "", failed == 0))
    out["overload_unanswered_pct"] = errs["timeout"] / due * 100 if due else None
    checks.append(_check("overload: admin /healthz answers right after", health_after, " s",
                         health_after is not None and health_after < 1.0))
    ref = before["latency_ms"]["p99"]
    tail = [b for b in after.get("timeline", []) if b["t"] >= 5]
    lat = [b["latency_ms"]["p99"] for b in tail if b["requests"]]
    recovered = max(lat) if lat else None
    bound = max(2 * ref, ref + 5)
    out["recovery_bound_ms"] = bound
    errs_after = _errors(after)
    failed_after = errs_after["connect"] + errs_after["reset"] + errs_after["timeout"] + errs_after["5xx"]
    checks.append(_check(f"recovery: p99 per second of the last 10 s at 0.5x <= {bound:.1f} ms", recovered, " ms",
                         recovered is not None and recovered <= bound and failed_after == 0))
    out["checks"] = checks
    return out


def soak(
    args: argparse.Namespace,
    pinning: R.Pinning,
    port: int,
    capacity: float,
    new_sampler: Any,
    patience: R.Patience,
) -> dict[str, Any]:
    rate = capacity / 2
    seconds = args.minutes * 60
    bucket = 60.0 if args.minutes >= 2 else 10.0
    print(f"  soak: {args.minutes:g} min at {rate:.0f} req/s with attack traffic ...", file=sys.stderr, flush=True)
    s = new_sampler()
    fds_before = settle_fds(s.pid, s.port, s.up_port)  # connections of the previous phase closed
    patience.wait_quiet()
    s.sample()
    data = loadgen(
        pinning, port, mix=args.soak_mix, rate=rate, duration=seconds, connections=32, max_connections=512,
        timeline=bucket, sampler=s, every=5.0, population=args.population,
    )
    fds_after = settle_fds(s.pid, s.port, s.up_port)  # the load generator's connections are closed
    s.sample()
    out = _phase_summary(data, s)
    out["fds_before"], out["fds_after"] = fds_before, fds_after
    out["bucket_s"] = bucket
    # interference per minute is not measured per bucket: the phase's figure is in other_core0/1
    ref_t = min(60.0, seconds / 4)
    during = [x for x in s.samples[:-1] if x["t"] <= seconds + 5]
    ref = next((x for x in during if x["t"] >= ref_t), None)
    end = during[-1] if during else None
    checks = []
    if ref and end:
        growth = end["rss_mb"] / ref["rss_mb"] - 1
        out["rss_ref_mb"], out["rss_end_mb"], out["rss_ref_t"] = ref["rss_mb"], end["rss_mb"], ref["t"]
        checks.append(_check(f"soak: RSS growth from t={ref['t']:.0f}s to the end < 10%", growth * 100, " %",
                             growth < GROWTH_LIMIT))
    # The upstream keep-alive pool may grow during the soak (it is bounded by
    # limits.upstream_connections per worker): every other fd must be back where it was.
    leak = sum(v for k, v in fds_after.items() if k != "upstream") - sum(
        v for k, v in fds_before.items() if k != "upstream"
    )
    checks.append(_check(f"soak: fds once idle, upstream pool aside: after = before (+/-{FD_SLACK})", leak, "",
                         abs(leak) <= FD_SLACK))
    pool_cap = args.pool_cap
    checks.append(_check(f"soak: upstream keep-alive pool within its limit ({pool_cap})",
                         fds_after.get("upstream"), "", fds_after.get("upstream", 0) <= pool_cap))
    p99s = [b["latency_ms"]["p99"] for b in data.get("timeline", []) if b["requests"]]
    # the last bucket may be a sliver: judge whole buckets only
    whole = [b["latency_ms"]["p99"] for b in data.get("timeline", []) if b["t"] + bucket <= seconds + 1e-6]
    if whole:
        med = statistics.median(whole)
        bound = max(2 * med, med + 5)
        out["p99_bound_ms"] = bound
        checks.append(_check(f"soak: every {bucket:g}-s p99 <= {bound:.1f} ms (2x median, or +5 ms)",
                             max(whole), " ms", max(whole) <= bound))
    out["p99_per_bucket_ms"] = p99s
    errs = _errors(data, LEGIT_KINDS)
    failed = errs["connect"] + errs["reset"] + errs["timeout"] + errs["5xx"] + errs["503"]
    checks.append(_check("soak: no legitimate request failed (5xx, reset, timeout)", failed, "", failed == 0))
    out["checks"] = checks
    return out


# --------------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return R._fmt(v, spec)


def _status_text(statuses: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-"


def report(data: dict[str, Any]) -> str:
    env, cfg = data["environment"], data["config"]
    lines = [
        f"loginguard load and soak  {data['date']}",
        f"machine   {env['cpu_model']}, {env['cores']} cores, Linux {env['kernel']}",
        f"software  Python {env['python']}, aiohttp {env['aiohttp']}, uvloop {env['uvloop']}",
        f"guard     store {cfg['store']}, {cfg['workers']} worker(s), shipped guard.yaml (see notes)",
        f"load      bench/loadgen.py open loop; blend {cfg['mix_legit']} (capacity, overload), "
        f"{cfg['mix_soak']} (soak)",
        f"pinning   {env['pinning']}",
    ]
    cap = data.get("capacity")
    if cap:
        lines.append(f"capacity  {cap['rps']:.0f} req/s (closed loop, 32 connections, legitimate blend)")
    lines.append("")
    head = (
        f"{'phase':<22} {'rate':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MB':>13} "
        f"{'fds':>9} {'conns':>5} {'other %':>7}  statuses / errors"
    )
    lines.append(head)
    rows: list[tuple[str, dict[str, Any]]] = []
    ov = data.get("overload")
    if ov:
        rows += [("0.5x before", ov["before"]), ("2x overload", ov["overload"]), ("0.5x after", ov["after"])]
    sk = data.get("soak")
    if sk:
        rows.append((f"soak {cfg['minutes']:g} min 0.5x+attack", sk))
    for name, ph in rows:
        rss = ph.get("rss_mb") or []
        fds = ph.get("fds") or []
        other = f"{_fmt(_pct(ph.get('other_core0')), '.0f')}/{_fmt(_pct(ph.get('other_core1')), '.0f')}"
        errs = ph["errors"]
        err_text = ", ".join(f"{k} {v}" for k, v in errs.items() if v)
        lines.append(
            f"{name:<22} {_fmt(ph.get('target_rate'), '.0f'):>6} {ph['rps']:>7.0f} {ph['p50_ms']:>8.2f} "
            f"{ph['p99_ms']:>8.2f} {ph['max_ms']:>8.1f} "
            f"{(f'{min(rss):.0f}-{max(rss):.0f}' if rss else '-'):>13} "
            f"{(f'{min(fds)}-{max(fds)}' if fds else '-'):>9} {_fmt(ph.get('peak_connections'), 'd'):>5} "
            f"{other:>7}  {_status_text(ph['statuses'])}" + (f"; {err_text}" if err_text else "")
        )
    if ov:
        tl = ov["overload"].get("timeline") or []
        lines.append("overload p99 ms per second:          " + " ".join(f"{b['p99_ms']:.0f}" for b in tl))
        if ov.get("service_p99_ms"):
            lines.append("overload service p99 ms per second:  " + " ".join(f"{v:.0f}" for v in ov["service_p99_ms"]))
        tl = ov["after"].get("timeline") or []
        lines.append("after overload, p99 ms per second:   " + " ".join(f"{b['p99_ms']:.1f}" for b in tl))
    if sk:
        lines.append(f"soak p99 ms per {sk['bucket_s']:g} s: " + " ".join(f"{v:.2f}" for v in sk["p99_per_bucket_ms"]))
        rss = sk.get("rss_mb") or []
        if rss:
            step = max(1, len(rss) // 12)
            lines.append("soak RSS MB (every 5 s, thinned): " + " ".join(f"{v:.0f}" for v in rss[::step]))
        lines.append(f"soak fds once idle: before {_fd_text(sk['fds_before'])}; after {_fd_text(sk['fds_after'])}")
        kinds = sk.get("kinds") or {}
        lines.append(
            "soak by kind: "
            + "; ".join(f"{k} {g['requests']} (p99 {g['p99_ms']:.2f} ms; {_status_text(g['statuses'])})"
                        for k, g in kinds.items())
        )
    metrics = data.get("metrics") or {}
    if metrics and "error" not in metrics:
        shown = {k.replace("guard_requests_total", "requests"): int(v) for k, v in metrics.items() if v}
        lines.append("guard /metrics: " + ", ".join(f"{k} {v}" for k, v in sorted(shown.items())))
    for note in data.get("notes", []):
        lines.append(f"note: {note}")
    lines += ["", "targets"]
    for c in data["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}{c['unit']}"
        lines.append(f"  [{c['result']:<4}] {c['target']:<72} {value}")
    lines.append(f"\nguard alive at the end: {data.get('guard_alive')}; elapsed {data['elapsed_s']:.0f} s")
    return "\n".join(lines)


def _fd_text(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in kinds.items() if v) or "-"


def _pct(v: float | None) -> float | None:
    return None if v is None else v * 100


if __name__ == "__main__":
    sys.exit(main())
