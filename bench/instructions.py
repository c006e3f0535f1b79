"""Instructions per proxied request, counted by callgrind: the guard against the baseline proxy.

    .venv/bin/python bench/instructions.py                        # ~8 minutes: baseline and guard, GET /page
    .venv/bin/python bench/instructions.py --path /contact --requests 500 --json out.json

Why.  The throughput target (guard >= 0.9x the baseline proxy) is a ratio of two CPU costs, and
on the development VM one CPU microsecond is not the same from one hour to the next: the
baseline's CPU per GET /page went from 83 to 501 us within a day, and ratios measured in one
run moved with it.  Instruction counts do not move with the host.  This counts, for each
target, the instructions its process executes per request, so that a change to the guard can
be judged by how much work it adds or removes, whatever the VM is doing.

How.  The bench upstream runs natively; each target runs under ``valgrind --tool=callgrind``
three times: (A) start, ``--requests`` sequential GETs on one keep-alive connection, stop;
(B) start, stop; (C) start, ``--idle`` seconds of nothing, stop.  The guard runs timers of
its own (the loop-lag probe, the store's sweeps, the decision log's flush), which run per
second, not per request, and a request under valgrind takes some 50 times its native time, so
those are taken out: per request = (A - B - idle rate x the requests' wall time) / N, with
idle rate = (C - B) / ``--idle``.

What it does not see.  An instruction is not a nanosecond: the kernel's work in each
``send``/``recv`` (about a fifth of the baseline's CPU per request on the development VM,
py-spy) and cache misses count nothing here, so the instruction ratio is not the throughput
ratio.  Use it to compare two versions of the guard, next to the suite's ratio from the
same hour.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402

READY_TIMEOUT = 600.0   # start-up under valgrind: about a minute for the guard on the development VM
_REFS = re.compile(r"==\d+== (?:I\s+refs|Collected)\s*:\s*([\d,]+)")


@dataclass
class Count:
    """One target's counts: the three runs, and what they give per request."""

    target: str
    path: str
    requests: int
    with_requests: int       # A: instructions of a run that served ``requests``
    bare: int                # B: a run that served none
    idle: int                # C: a run that idled ``idle_s``
    idle_s: float
    requests_s: float        # wall time the requests took in run A

    @property
    def idle_per_s(self) -> float:
        return max(0.0, (self.idle - self.bare) / self.idle_s)

    @property
    def per_request(self) -> float:
        return per_request(self.with_requests, self.bare, self.idle_per_s, self.requests_s, self.requests)


def per_request(with_requests: int, bare: int, idle_per_s: float, requests_s: float, n: int) -> float:
    """Instructions per request: run A less run B, less what the idle timers ran meanwhile."""
    if n <= 0:
        raise ValueError("at least one request is needed")
    return (with_requests - bare - idle_per_s * requests_s) / n


def refs(log_text: str) -> int:
    """The instruction count callgrind prints when the process exits."""
    found = _REFS.findall(log_text)
    if not found:
        raise RuntimeError("no instruction count in the valgrind output (did the process exit cleanly?)")
    return int(found[-1].replace(",", ""))


def drive(port: int, path: str, n: int) -> float:
    """``n`` sequential GETs of ``path`` on one keep-alive connection; the seconds they took."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.monotonic()
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}")
        return time.monotonic() - t0
    finally:
        conn.close()


class Counter:
    def __init__(self, tmp: Path, valgrind: str) -> None:
        self.tmp = tmp
        self.valgrind = valgrind
        self.procs = R.Processes(tmp, R.Pinning())
        self.up_port = 0
        self.runs = 0

    def start_upstream(self) -> None:
        self.up_port = R.free_port()
        up = self.procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(self.up_port)])
        err = R.wait_http(f"http://127.0.0.1:{self.up_port}/health", up, 15)
        if err:
            raise SystemExit(f"upstream did not start: {err}")

    def _command(self, target: str, port: int) -> tuple[list[str], str]:
        """The target's command line and the URL that answers once it is ready."""
        if target == "baseline":
            cmd = [sys.executable, str(BENCH / "baseline_proxy.py"), "--port", str(port),
                   "--upstream", f"http://127.0.0.1:{self.up_port}"]
            return cmd, f"http://127.0.0.1:{port}/health"
        admin = R.free_port()
        cfg, _ = R.write_guard_config(None, self.tmp, port, admin, self.up_port, name=f"guard{self.runs}")
        return [sys.executable, "-m", "guard", "run", "-c", str(cfg)], f"http://127.0.0.1:{admin}/healthz"

    def run(self, target: str, path: str, n: int, idle_s: float) -> tuple[int, float]:
        """One run under callgrind: its instruction count, and the seconds the requests took."""
        self.runs += 1
        port = R.free_port()
        cmd, ready = self._command(target, port)
        vg = [self.valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        env = R.guard_env() if target == "guard" else None
        spawned = self.procs.start(f"{target}-{self.runs}", [*vg, *cmd], env)
        try:
            err = R.wait_http(ready, spawned, READY_TIMEOUT)
            if err is None and target == "guard":   # the admin answers before the public side forwards
                err = R.wait_http(f"http://127.0.0.1:{port}/health", spawned, READY_TIMEOUT)
            if err:
                raise RuntimeError(f"{target} under valgrind did not start: {err}\n{spawned.log_tail()}")
            took = drive(port, path, n) if n else 0.0
            if idle_s:
                time.sleep(idle_s)
        finally:
            self.procs.stop(spawned)
        return refs(spawned.log.read_text(errors="replace")), took

    def count(self, target: str, path: str, n: int, idle_s: float) -> Count:
        with_requests, took = self.run(target, path, n, 0.0)
        bare, _ = self.run(target, path, 0, 0.0)
        idle, _ = self.run(target, path, 0, idle_s)
        return Count(target, path, n, with_requests, bare, idle, idle_s, took)


def report(counts: list[Count]) -> str:
    lines = [f"{'target':<10} {'path':<10} {'requests':>8} {'instructions/request':>21} {'idle/s':>12}"]
    for c in counts:
        lines.append(f"{c.target:<10} {c.path:<10} {c.requests:>8} {c.per_request:>21,.0f} {c.idle_per_s:>12,.0f}")
    by = {c.target: c for c in counts}
    if "guard" in by and "baseline" in by:
        lines.append(f"guard / baseline: {by['guard'].per_request / by['baseline'].per_request:.2f}x the instructions")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="baseline,guard", help="any of baseline,guard (comma-separated)")
    ap.add_argument("--path", default="/page", help="the bench upstream's route to GET (/page, /contact)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle run (C)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if not targets or any(t not in ("baseline", "guard") for t in targets):
        ap.error("--targets: baseline and/or guard")
    if args.requests < 1 or args.idle <= 0:
        ap.error("--requests must be >= 1 and --idle > 0")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="loginguard-instructions-"))
    counter = Counter(tmp, valgrind)
    try:
        counter.start_upstream()
        counts = []
        for target in targets:
            print(f"counting {target} (three runs under callgrind) ...", file=sys.stderr, flush=True)
            counts.append(counter.count(target, args.path, args.requests, args.idle))
    finally:
        R.release(counter.procs, tmp, keep=False)
    print(report(counts))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{**asdict(c), "per_request": c.per_request, "idle_per_s": c.idle_per_s} for c in counts], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
