"""One command that measures loginguard against its reference points, on one machine, in one run.

Why one run: throughput numbers from different days, machines or load generators
cannot be divided by each other.  The claims loginguard makes are ratios -- at
least 0.9x a plain aiohttp proxy, at least 7x mitmproxy, at most 1 ms of added
p99 latency -- so every target is measured here back to back, by the same load
generator, with the same pinning, against the same upstream:

  direct     the upstream alone (the ceiling)
  baseline   bench/baseline_proxy.py, the minimal correct aiohttp proxy
  mitmproxy  mitmdump in reverse-proxy mode
  guard      ``python -m guard run`` with a config derived from the shipped guard.yaml

Each target runs two closed-loop workloads (GET /page: 8 KB pass-through HTML;
POST /login: a form the guard must inspect), then an open-loop test at half the
guard's max rate measures p99 latency of guard (and baseline) against direct.

Pinning (2-core machine): the server side -- the target AND the upstream -- is on
core 0, the load generator on core 1.  Putting the upstream beside the proxy is
deliberate: the proxy cannot be given a core of its own without taking it from
the load generator, and a load generator sharing a core with the target measures
the scheduler.  So every proxy number is "proxy + upstream on one core", which
penalises all proxies alike; the ratios between proxies stay fair, while the ratio
to direct overstates proxy cost (the direct case has core 0 to itself).

  .venv/bin/python bench/run.py [--duration 10] [--connections 32] [--quick] [--json out.json]

The pieces (process control, pinning, load generators, targets, the throughput and
added-latency measurements, interference detection) are importable: ``bench/suite.py``
and ``bench/soak.py`` build on them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # imported from elsewhere (tests, suite.py): the bench's modules
    sys.path.insert(0, str(BENCH))

from upstream import CONTACT_PII, CONTACT_SIZE, PAGE_SIZE  # noqa: E402

SERVER_CORE = 0
LOADGEN_CORE = 1
TARGETS = ("direct", "baseline", "nginx", "mitmproxy", "guard")
DEFAULT_TARGETS = ("direct", "baseline", "mitmproxy", "guard")
OTHER_WARN = 0.05  # foreign CPU share of a core above which a row is flagged as disturbed
SHIPPED_GUARD_CONFIGS = ("guard.yaml", "deploy/guard.yaml", "docs/guard.yaml", "examples/guard.yaml")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    method: str
    path: str
    body: str = ""
    expect_status: int = 200
    expect_bytes: int | None = None
    vary: bool = False   # logins from many clients and accounts through X-Forwarded-For
    pii: tuple[str, ...] = ()  # values in the page that a PII-rewriting target must not let through


WORKLOADS = (
    Workload("page", "GET /page", "GET", "/page", expect_status=200, expect_bytes=PAGE_SIZE),
    Workload(
        "login", "POST /login", "POST", "/login", "user=alice&password=right", expect_status=302, vary=True
    ),
)
# The page the guard rewrites: phone, e-mail and user id in hidden fields (tokenized by default).
CONTACT = Workload(
    "contact", "GET /contact", "GET", "/contact", expect_status=200, expect_bytes=CONTACT_SIZE, pii=CONTACT_PII
)
FORM = "application/x-www-form-urlencoded"


# --------------------------------------------------------------------------------------------
# processes


def release(procs: Processes, tmp: Path, keep: bool) -> None:
    """End of a run: every process stopped, the scratch directory removed (or kept and named)."""
    procs.stop_all()
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pinning:
    """CPU affinity for children; a no-op (with a reason) where the cores do not exist."""

    def __init__(self) -> None:
        cores = os.sched_getaffinity(0)
        self.enabled = {SERVER_CORE, LOADGEN_CORE} <= cores
        self.note = (
            f"servers on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}"
            if self.enabled
            else f"NOT pinned: cores {sorted(cores)} available, need {SERVER_CORE} and {LOADGEN_CORE}"
        )

    def preexec(self, core: int) -> Callable[[], None] | None:
        if not self.enabled:
            return None
        return lambda: os.sched_setaffinity(0, {core})


@dataclass
class Spawned:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 12, chars: int = 1500) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


class Processes:
    """Every server this run starts, so that ``stop_all`` in a finally leaves nothing behind."""

    def __init__(self, tmp: Path, pinning: Pinning) -> None:
        self.tmp, self.pinning = tmp, pinning
        self.running: list[Spawned] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Spawned:
        log = self.tmp / f"{name}.stderr"
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                preexec_fn=self.pinning.preexec(SERVER_CORE),
                start_new_session=True,  # own process group: workers are stopped with it
            )
        spawned = Spawned(name, popen, log)
        self.running.append(spawned)
        return spawned

    def stop(self, spawned: Spawned) -> None:
        """SIGTERM the process group, SIGKILL it if the leader has not exited in 5 s or left workers."""
        pgid = spawned.pid  # == pid, thanks to start_new_session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            spawned.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            spawned.popen.wait(5.0)
        if _group_members(pgid):  # workers that outlived their leader: still our group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if spawned in self.running:
            self.running.remove(spawned)

    def stop_all(self) -> None:
        for spawned in reversed(list(self.running)):
            self.stop(spawned)


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime+stime seconds) for every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = Path(f"/proc/{entry}/stat").read_text()
                if int(raw[raw.rindex(")") + 2 :].split()[2]) == pgid:
                    members.append(int(entry))
    return members


def cpu_seconds(pid: int) -> float:
    """CPU time (user+system) of ``pid`` and all its descendants (a multi-worker guard counts whole)."""
    table = _proc_table()
    total, frontier, seen = 0.0, [pid], set()
    while frontier:
        p = frontier.pop()
        if p in seen or p not in table:
            continue
        seen.add(p)
        total += table[p][1]
        frontier.extend(child for child, (ppid, _) in table.items() if ppid == p)
    return total


@dataclass(frozen=True)
class CoreTimes:
    """Per-core CPU seconds from /proc/stat: time running tasks, and time stolen by the hypervisor."""

    tasks: dict[int, float]
    steal: dict[int, float]
    wall: float

    @staticmethod
    def now() -> CoreTimes:
        tick = os.sysconf("SC_CLK_TCK")
        tasks, steal = {}, {}
        for line in Path("/proc/stat").read_text().splitlines():
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                f = [int(x) for x in m.group(2).split()]
                tasks[int(m.group(1))] = (f[0] + f[1] + f[2]) / tick  # user + nice + system
                steal[int(m.group(1))] = f[7] / tick
        return CoreTimes(tasks, steal, time.monotonic())

    def other(self, later: CoreTimes, core: int, ours: float) -> float | None:
        """Share of ``core`` used by processes that are not ours (interference), 0..1."""
        if core not in self.tasks or core not in later.tasks:
            return None
        return max(0.0, later.tasks[core] - self.tasks[core] - ours) / (later.wall - self.wall)

    def stolen(self, later: CoreTimes, core: int) -> float | None:
        if core not in self.steal or core not in later.steal:
            return None
        return (later.steal[core] - self.steal[core]) / (later.wall - self.wall)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_http(url: str, spawned: Spawned, timeout: float) -> str | None:
    """Poll ``url`` until it answers 200; the error text if it does not (None when ready)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not spawned.alive():
            return f"exited with code {spawned.popen.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return None
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"not ready after {timeout:.0f}s ({last})"


def probe(port: int, wl: Workload, rewrites: bool = False) -> dict[str, Any]:
    """One request of the workload, to check the target answers it the way the upstream does.

    ``rewrites``: the target rewrites PII, so the workload's ``pii`` values must all be gone
    (and the size may differ); otherwise they must all be there, byte for byte.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        headers = {"Content-Type": FORM} if wl.method == "POST" else {}
        conn.request(wl.method, wl.path, body=wl.body or None, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
    seen = sum(value.encode() in body for value in wl.pii)
    size_ok = wl.expect_bytes is None or len(body) == wl.expect_bytes or (rewrites and wl.pii)
    ok = resp.status == wl.expect_status and bool(size_ok)
    detail = f"{resp.status}, {len(body)} B"
    if not ok:
        detail += f" (expected {wl.expect_status}" + (
            f", {wl.expect_bytes} B)" if wl.expect_bytes is not None else ")"
        )
    if wl.pii:
        want = 0 if rewrites else len(wl.pii)
        detail += f", PII {seen}/{len(wl.pii)} visible"
        if seen != want:
            ok = False
            detail += f" (expected {want})"
    return {"ok": ok, "status": resp.status, "bytes": len(body), "pii_visible": seen, "detail": detail}


# --------------------------------------------------------------------------------------------
# load generators


@dataclass
class LoadResult:
    requests: int
    duration: float
    rps: float
    p50_ms: float
    p99_ms: float
    p99_9_ms: float
    errors: int
    error_detail: dict[str, int]
    statuses: dict[str, int] | None
    loadgen_cpu_s: float


class LoadGen:
    name = "?"

    def __init__(self, pinning: Pinning, tmp: Path) -> None:
        self.pinning, self.tmp = pinning, tmp

    def closed(self, port: int, wl: Workload, connections: int, duration: float) -> LoadResult:
        raise NotImplementedError

    def _run(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[str, float]:
        before = children_cpu()
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=self.pinning.preexec(LOADGEN_CORE),
            check=False,
        )
        used = children_cpu() - before
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return proc.stdout, used


# Appended to wrk.lua for the login workload: wrk.lua's BENCH_VARY gives every account the
# same password, and one password tried against thousands of accounts is password spraying,
# which the shipped rules challenge -- the run would then measure the challenge page, not a
# login.  Real users have passwords of their own: ``right-<n>`` (the bench upstream accepts
# ``right`` and ``right-*``), with the client address drawn from all of 10.0.0.0/8.
WRK_VARY_OVERRIDE = """
-- appended by bench/run.py: one password per account (see WRK_VARY_OVERRIDE there)
if os.getenv("BENCH_VARY") then
  function request()
    local n = math.random(0, 16777215)
    wrk.headers["X-Forwarded-For"] = string.format(
      "10.%d.%d.%d", math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
    return wrk.format(method, nil, wrk.headers, string.format("user=user%d&password=right-%d", n, n))
  end
end
"""


class Wrk(LoadGen):
    def __init__(self, pinning: Pinning, tmp: Path, exe: str) -> None:
        super().__init__(pinning, tmp)
        self.exe = exe
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
        self.name = (
            (out.stdout + out.stderr).splitlines()[0].split(" [")[0] if out.stdout + out.stderr else "wrk"
        )

    def closed(self, port: int, wl: Workload, connections: int, duration: float) -> LoadResult:
        seconds = max(1, round(duration))  # wrk takes whole seconds
        env = dict(os.environ, BENCH_METHOD=wl.method, BENCH_BODY=wl.body, BENCH_CONTENT_TYPE=FORM)
        if wl.vary:
            env["BENCH_VARY"] = "1"
        cmd = [self.exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
        cmd += ["-s", str(self.script(wl.vary)), f"http://127.0.0.1:{port}{wl.path}"]
        stdout, cpu = self._run(cmd, seconds + 30, env)
        line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {stdout[-300:]}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        if not data["requests"]:
            raise RuntimeError(f"no responses in {seconds} s: {data['errors']}")
        lat, err = data["latency_us"], data["errors"]
        elapsed = data["duration_us"] / 1e6
        return LoadResult(
            requests=data["requests"],
            duration=elapsed,
            rps=data["requests"] / elapsed,
            p50_ms=lat["p50"] / 1000,
            p99_ms=lat["p99"] / 1000,
            p99_9_ms=lat["p99_9"] / 1000,
            errors=sum(err.values()),
            error_detail=err,
            statuses=None,
            loadgen_cpu_s=cpu,
        )

    def script(self, vary: bool) -> Path:
        if not vary:
            return BENCH / "wrk.lua"
        path = self.tmp / "wrk-vary.lua"
        if not path.exists():
            path.write_text((BENCH / "wrk.lua").read_text() + WRK_VARY_OVERRIDE)
        return path


class PyLoadGen(LoadGen):
    name = "bench/loadgen.py"

    def _cmd(self, port: int, wl: Workload, connections: int, duration: float) -> list[str]:
        cmd = [sys.executable, str(BENCH / "loadgen.py"), "--url", f"http://127.0.0.1:{port}{wl.path}"]
        cmd += ["--method", wl.method, "--connections", str(connections), "--duration", f"{duration:g}"]
        if wl.body:
            cmd += ["--body", wl.body, "--content-type", FORM]
        if wl.vary:
            cmd += ["--vary"]
        return cmd

    def closed(self, port: int, wl: Workload, connections: int, duration: float) -> LoadResult:
        stdout, cpu = self._run(self._cmd(port, wl, connections, duration), duration + 30)
        return self._result(json.loads(stdout), cpu)

    def open(
        self,
        port: int,
        wl: Workload,
        rate: float,
        connections: int,
        duration: float,
        warmup: float,
        samples: Path,
    ) -> tuple[LoadResult, dict[str, Any]]:
        cmd = self._cmd(port, wl, connections, duration)
        cmd += ["--rate", f"{rate:.1f}", "--warmup", f"{warmup:g}", "--samples", str(samples)]
        stdout, cpu = self._run(cmd, duration + warmup + 30)
        data = json.loads(stdout)
        return self._result(data, cpu), data

    @staticmethod
    def _result(data: dict[str, Any], cpu: float) -> LoadResult:
        lat = data["latency_ms"]
        return LoadResult(
            requests=data["requests"],
            duration=data["duration"],
            rps=data["rps"],
            p50_ms=lat["p50"],
            p99_ms=lat["p99"],
            p99_9_ms=lat["p99_9"],
            errors=data["errors"]["total"],
            error_detail={k: v for k, v in data["errors"].items() if k != "total"},
            statuses=data["statuses"],
            loadgen_cpu_s=cpu,
        )


# --------------------------------------------------------------------------------------------
# targets


@dataclass
class Running:
    """A target that is up: where to send load, whose CPU to count."""

    port: int
    cpu_pid: int
    notes: list[str] = field(default_factory=list)
    rewrites_pii: bool = False  # the guard: PII in hidden fields is tokenized
    aux_pids: tuple[int, ...] = ()  # helpers on the server core whose CPU is ours too (Redis)
    admin_port: int = 0  # the guard's admin listener (/healthz, /metrics)


@dataclass(frozen=True)
class GuardVariant:
    """How to run the guard: store backend and worker count (Redis URL from ``Bench.redis_url``)."""

    store: str = "memory"
    workers: int = 1


class TargetUnavailable(Exception):
    pass


class Bench:
    """The upstream, and the targets in front of it: each started on demand and stopped after.

    Guard variants (store backend, workers) are added with ``add_guard``; a Redis-backed
    variant uses ``redis_url``, whose server's pid goes in ``redis_pid`` so its CPU is
    counted as the target's own.
    """

    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Processes, pinning: Pinning) -> None:
        self.args, self.tmp, self.procs, self.pinning = args, tmp, procs, pinning
        self.upstream: Spawned | None = None
        self.up_port = 0
        self.patience = Patience(args.patience)
        self.redis_url: str | None = None
        self.redis_pid: int | None = None
        self.guards: dict[str, GuardVariant] = {"guard": GuardVariant()}
        self.on_guard_start: Callable[[str, GuardVariant], None] | None = None  # e.g. flush Redis

    def add_guard(self, name: str, variant: GuardVariant) -> None:
        self.guards[name] = variant

    # upstream ---------------------------------------------------------------------------------
    def start_upstream(self) -> None:
        self.up_port = free_port()
        self.upstream = self.procs.start(
            "upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(self.up_port)]
        )
        err = wait_http(f"http://127.0.0.1:{self.up_port}/health", self.upstream, 15)
        if err:
            raise SystemExit(f"upstream did not start: {err}\n{self.upstream.log_tail()}")

    # targets ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def target(self, name: str) -> Iterator[Running]:
        """Start ``name`` (direct: nothing to start), yield it, stop it."""
        assert self.upstream is not None
        if name == "direct":
            yield Running(self.up_port, self.upstream.pid)
            return
        if name in self.guards:
            spawned, running = self._guard(name, self.guards[name])
        else:
            starter = {"baseline": self._baseline, "mitmproxy": self._mitmproxy, "nginx": self._nginx}[name]
            spawned, running = starter()
        try:
            yield running
        finally:
            self.procs.stop(spawned)

    def _baseline(self) -> tuple[Spawned, Running]:
        port = free_port()
        cmd = [sys.executable, str(BENCH / "baseline_proxy.py"), "--port", str(port)]
        spawned = self.procs.start("baseline", [*cmd, "--upstream", f"http://127.0.0.1:{self.up_port}"])
        self._ready(spawned, f"http://127.0.0.1:{port}/health", 15, "baseline proxy did not start")
        return spawned, Running(port, spawned.pid)

    def _mitmproxy(self) -> tuple[Spawned, Running]:
        exe = Path(sys.executable).parent / "mitmdump"
        found = str(exe) if exe.exists() else shutil.which("mitmdump")
        if found is None:
            raise TargetUnavailable("mitmdump not found (pip install mitmproxy)")
        port = free_port()
        confdir = self.tmp / "mitmproxy"  # its CA files land here, not in ~/.mitmproxy
        cmd = [found, "--mode", f"reverse:http://127.0.0.1:{self.up_port}", "-p", str(port), "-q"]
        cmd += ["--listen-host", "127.0.0.1", "--set", f"confdir={confdir}"]
        spawned = self.procs.start("mitmproxy", cmd)
        self._ready(spawned, f"http://127.0.0.1:{port}/health", 30, "mitmdump did not start")
        return spawned, Running(port, spawned.pid)

    def _nginx(self) -> tuple[Spawned, Running]:
        exe = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
        )
        if exe is None:
            raise TargetUnavailable("nginx not installed (apt-get install nginx)")
        port = free_port()
        prefix = self.tmp / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = write_nginx_config(prefix, port, self.up_port)
        # -e: its own error log from the first line on (not /var/log/nginx); -p: every relative path.
        cmd = [exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
        spawned = self.procs.start("nginx", cmd)
        self._ready(spawned, f"http://127.0.0.1:{port}/health", 15, "nginx did not start")
        return spawned, Running(port, spawned.pid, ["1 worker process, keep-alive upstream pool of 64"])

    def _guard(self, name: str = "guard", variant: GuardVariant | None = None) -> tuple[Spawned, Running]:
        variant = variant or GuardVariant()
        if variant.store == "redis" and not self.redis_url:
            raise TargetUnavailable("no redis-server for the Redis store")
        if self.on_guard_start is not None:
            self.on_guard_start(name, variant)
        port, admin = free_port(), free_port()
        cfg, notes = write_guard_config(
            self.args.guard_config,
            self.tmp,
            port,
            admin,
            self.up_port,
            store=variant.store,
            redis_url=self.redis_url,
            name=name,
        )
        env = guard_env()
        cmd = [sys.executable, "-m", "guard", "run", "-c", str(cfg)]
        if variant.workers > 1:
            cmd += ["--workers", str(variant.workers)]
            if variant.store == "memory":
                cmd.append("--allow-split-state")
                notes.append("--allow-split-state: each worker counts and bans on its own")
        spawned = self.procs.start(name, cmd, env)
        self._ready(spawned, f"http://127.0.0.1:{admin}/healthz", 30, "guard did not start")
        err = wait_http(f"http://127.0.0.1:{port}/health", spawned, 10)
        if err:
            self.procs.stop(spawned)
            raise TargetUnavailable(f"guard did not pass /health through: {err}")
        if variant.workers > 1:
            err = wait_workers(spawned, variant.workers, port, 20)
            if err:
                self.procs.stop(spawned)
                raise TargetUnavailable(err)
        aux = (self.redis_pid,) if variant.store == "redis" and self.redis_pid else ()
        return spawned, Running(port, spawned.pid, notes, rewrites_pii=True, aux_pids=aux, admin_port=admin)

    def _ready(self, spawned: Spawned, url: str, timeout: float, what: str) -> None:
        err = wait_http(url, spawned, timeout)
        if err:
            # The last lines of its output usually name the problem (an exception's last line).
            tail = " | ".join(ln.strip() for ln in spawned.log_tail(lines=3).splitlines() if ln.strip())
            self.procs.stop(spawned)
            raise TargetUnavailable(f"{what}: {err}" + (f": {tail}" if tail else ""))


def guard_env() -> dict[str, str]:
    """The environment of a guard the bench starts: this checkout's package, and no ``GUARD_*``
    variables, which override config keys (listen, upstream, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def wait_workers(spawned: Spawned, workers: int, port: int, timeout: float) -> str | None:
    """Wait until ``workers`` sockets listen on ``port`` (the port answers as soon as one is up).

    Each worker binds its own socket (SO_REUSEPORT), so the count of listening sockets in
    /proc/net/tcp{,6} says when the last one can take connections.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spawned.alive():
            return f"guard exited before {workers} workers listened"
        if listening_sockets(port) >= workers:
            return None
        time.sleep(0.1)  # polled: another process's bind has no event to wait on
    return f"guard did not start {workers} listening workers in {timeout:.0f} s"


def listening_sockets(port: int) -> int:
    """How many TCP sockets on this host are in LISTEN state (0A) on local ``port``."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def write_nginx_config(prefix: Path, port: int, up_port: int) -> Path:
    """A minimal reverse proxy: one worker, a keep-alive pool to the upstream, no access log.

    Everything it writes (pid, logs, temp files) stays under ``prefix``.  Run as root, its
    worker would switch to ``nobody``; ``user`` keeps it the current user instead.
    """
    import pwd

    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream bench_upstream {{
        server 127.0.0.1:{up_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
    )
    return conf


FILE_KEYS = frozenset({"file", "cert", "key", "ca_bundle", "city", "asn", "hosting_asns"})


def _absolutize(node: Any, base: Path, key: str = "") -> Any:
    """Make the config's relative file paths absolute, as the guard would resolve them.

    The guard resolves them against the config file's folder, and the bench's copy
    lives in a temp dir.  A string counts as a path when its key names a file, or it
    sits in ``rules``, or it contains a slash or dot and exists under ``base`` --
    so ids, levels and other words stay as they are.
    """
    if isinstance(node, dict):
        return {k: _absolutize(v, base, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolutize(v, base, key) for v in node]
    if not isinstance(node, str) or not node or os.path.isabs(node) or "://" in node:
        return node
    looks_like_path = (
        key in FILE_KEYS or key == "rules" or (("/" in node or "." in node) and (base / node).exists())
    )
    return str(base / node) if looks_like_path else node


def write_guard_config(
    explicit: str | None,
    tmp: Path,
    port: int,
    admin_port: int,
    up_port: int,
    *,
    store: str = "memory",
    redis_url: str | None = None,
    name: str = "guard",
    extra: dict[str, Any] | None = None,
) -> tuple[Path, list[str]]:
    """The shipped guard.yaml with only what the bench must change.

    Written to ``tmp/<name>.yaml``, logging to ``tmp/<name>.log``; ``extra`` is merged in
    last, one level deep (e.g. ``{"admin": {"token": ...}}``).

    Changed: listen/upstream/admin addresses, the store (``store``), the log destination
    (a file in the temp dir: logging stays as shipped, request lines included, but the
    terminal must not be the bottleneck), TLS and PROXY protocol off (the load is plain
    HTTP), relative paths made absolute, and the login endpoint pointed at the bench
    upstream's form (/login, field ``user``).
    Every change beyond the addresses is listed in the returned notes.
    """
    import yaml

    notes: list[str] = []
    if explicit:
        source: Path | None = Path(explicit).resolve()
    else:
        source = next((REPO / c for c in SHIPPED_GUARD_CONFIGS if (REPO / c).is_file()), None)
    if source is not None:
        data = yaml.safe_load(source.read_text()) or {}
        if not isinstance(data, dict):
            raise TargetUnavailable(f"{source} is not a YAML mapping")
        notes.append(f"config from {source.relative_to(REPO) if source.is_relative_to(REPO) else source}")
    else:
        data = {}
        notes.append("no shipped guard.yaml found: minimal config")
    data = _absolutize(data, source.parent if source is not None else REPO)

    data["listen"] = f"127.0.0.1:{port}"
    data["upstream"] = f"http://127.0.0.1:{up_port}"
    data["admin"] = {**(data.get("admin") or {}), "listen": f"127.0.0.1:{admin_port}"}
    if (data.get("store") or {}).get("backend", "memory") != store:
        notes.append(f"store backend set to {store}")
    data["store"] = {**(data.get("store") or {}), "backend": store}
    if store == "redis":
        if not redis_url:
            raise TargetUnavailable("store redis needs a Redis URL")
        data["store"]["url"] = redis_url
        if not data.get("secret_key"):  # required with Redis (GUARD_SECRET_KEY is kept out, see _guard)
            data["secret_key"] = secrets.token_hex(32)
            notes.append("secret_key: a random one for this run (the Redis store requires it)")
    data["log"] = {**(data.get("log") or {}), "file": str(tmp / f"{name}.log")}
    for key in ("tls", "proxy_protocol"):
        if data.pop(key, None):
            notes.append(f"{key} turned off")
    # The POST workload must hit a guarded login endpoint, or it measures pass-through again.
    logins = [ep for ep in data.get("logins") or [] if isinstance(ep, dict)]
    login = next((ep for ep in logins if ep.get("path") == "/login"), None)
    if login is None and logins:
        login = logins[0]
        notes.append(f"login endpoint {login.get('id')!r} moved from {login.get('path')!r} to /login")
        login.update(path="/login", match="exact")
    elif login is None:
        notes.append("added login endpoint /login")
        login = {"id": "bench-login", "path": "/login", "methods": ["POST"]}
        logins.append(login)
    for field_key, form_field in (("username", "user"), ("password", "password")):
        if field_key in login and login[field_key] != form_field:
            notes.append(
                f"login {field_key} field {login[field_key]!r} -> {form_field!r} (bench upstream's form)"
            )
            login[field_key] = form_field
    data["logins"] = logins
    # The load generator plays the load balancer: logins arrive from many clients through
    # X-Forwarded-For.  From one untrusted IP, 30k logins a second would (rightly) be banned.
    data["trusted_proxies"] = ["127.0.0.1/32"]
    notes.append("trusted_proxies: [127.0.0.1/32] (logins come from many clients via X-Forwarded-For)")
    for key, value in (extra or {}).items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, notes


# --------------------------------------------------------------------------------------------
# measurement


class Patience:
    """A time budget for coping with a shared machine: waiting for quiet, re-running disturbed runs.

    This machine may be shared (tests, another benchmark): a run that starts while
    another process is busy measures that process too.  Before each run we wait until
    the cores are idle (between runs our own servers are, so any CPU use seen then is
    someone else's), and a run that was disturbed anyway is re-run -- both only while
    the budget lasts, so the whole run stays within its time.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.spent = 0.0

    def wait_quiet(self) -> None:
        while self.spent < self.budget:
            before = CoreTimes.now()
            time.sleep(0.25)
            after = CoreTimes.now()
            self.spent += after.wall - before.wall
            busy = sum(after.tasks[c] - before.tasks[c] for c in after.tasks if c in before.tasks)
            if busy / (after.wall - before.wall) < OTHER_WARN:
                return

    def allow(self, seconds: float) -> bool:
        """Take ``seconds`` for a re-run if the budget has them."""
        if self.spent + seconds > self.budget:
            return False
        self.spent += seconds
        return True


def _disturbance(entry: dict[str, Any]) -> float:
    return _max_of([entry.get("other_core0"), entry.get("other_core1")]) or 0.0


def measure_throughput(
    bench: Bench,
    gen: LoadGen,
    name: str,
    running: Running,
    args: argparse.Namespace,
    workloads: Iterable[Workload] = WORKLOADS,
) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "ok", "notes": running.notes, "workloads": {}}
    for wl in workloads:
        entry: dict[str, Any] = {"probe": probe(running.port, wl, running.rewrites_pii)}
        try:
            gen.closed(running.port, wl, args.connections, args.warmup)  # warm-up, discarded
            best: dict[str, Any] | None = None
            for attempt in range(1 + args.retries):
                if attempt and not bench.patience.allow(args.duration):
                    break
                bench.patience.wait_quiet()
                run = _closed_run(bench, gen, name, running, wl, args)
                run["attempt"] = attempt + 1
                if best is None or _disturbance(run) < _disturbance(best):
                    best = run
                if _disturbance(best) <= OTHER_WARN:
                    break
            assert best is not None
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as exc:
            entry.update(status="n/a", reason=f"load run failed: {exc}")
            out["workloads"][wl.key] = entry
            continue
        entry.update(status="ok", **best)
        # wrk cannot say which statuses it got: a probe after the flood shows whether the
        # target started to answer differently (a guard blocking the bench's address, say).
        entry["probe_after"] = probe(running.port, wl, running.rewrites_pii)
        out["workloads"][wl.key] = entry
    return out


def _closed_run(
    bench: Bench, gen: LoadGen, name: str, running: Running, wl: Workload, args: argparse.Namespace
) -> dict[str, Any]:
    assert bench.upstream is not None
    cores0 = CoreTimes.now()
    cpu0, up0 = cpu_seconds(running.cpu_pid), cpu_seconds(bench.upstream.pid)
    aux0 = sum(cpu_seconds(p) for p in running.aux_pids)
    res = gen.closed(running.port, wl, args.connections, args.duration)
    cpu1, up1 = cpu_seconds(running.cpu_pid), cpu_seconds(bench.upstream.pid)
    aux1 = sum(cpu_seconds(p) for p in running.aux_pids)
    cores1 = CoreTimes.now()
    target_cpu = cpu1 - cpu0
    upstream_cpu = up1 - up0
    aux_cpu = aux1 - aux0
    server_cpu = (target_cpu if name == "direct" else target_cpu + upstream_cpu) + aux_cpu
    per_req = 1e6 / res.requests if res.requests else math.nan
    return {
        **asdict(res),
        "cpu_us_per_req": target_cpu * per_req,
        "upstream_cpu_us_per_req": upstream_cpu * per_req,
        "aux_cpu_us_per_req": aux_cpu * per_req if running.aux_pids else None,
        "core0_util": server_cpu / res.duration,
        "loadgen_util": res.loadgen_cpu_s / res.duration,
        # CPU that other processes on the machine took from our cores during the run:
        # anything above a few % means the run is disturbed.
        "other_core0": cores0.other(cores1, SERVER_CORE, server_cpu),
        "other_core1": cores0.other(cores1, LOADGEN_CORE, res.loadgen_cpu_s),
        "steal_core0": cores0.stolen(cores1, SERVER_CORE),
    }


def measure_added_latency(
    bench: Bench,
    gen: PyLoadGen,
    results: dict[str, Any],
    args: argparse.Namespace,
    candidates: Iterable[str] = ("direct", "baseline", "guard"),
) -> dict[str, Any]:
    """Open loop at half the guard's max rate, rounds interleaved across targets, samples pooled."""
    assert bench.upstream is not None
    basis_target = "guard" if _rps(results, "guard", "page") else "baseline"
    max_rps = _rps(results, basis_target, "page")
    if not max_rps:
        return {"status": "n/a", "reason": "no GET /page throughput for guard or baseline"}
    rate = max_rps / 2
    names = [n for n in candidates if results.get(n, {}).get("status") == "ok"]
    per_round = max(1.0, args.duration / args.rounds)
    wl = WORKLOADS[0]
    samples: dict[str, list[int]] = {n: [] for n in names}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    table: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        running: dict[str, Running] = {}
        for n in names:  # fresh processes: no state left over from the login flood
            try:
                running[n] = stack.enter_context(bench.target(n))
            except TargetUnavailable as exc:
                runs.pop(n)
                samples.pop(n)
                table[n] = {"status": "n/a", "reason": f"restart failed: {exc}"[:300]}
        for _ in range(args.rounds):
            for n, r in running.items():
                path = bench.tmp / f"samples-{n}.txt"
                pids = {r.cpu_pid, bench.upstream.pid, *r.aux_pids}
                for attempt in range(1 + args.retries):
                    bench.patience.wait_quiet()
                    cores0, cpu0 = CoreTimes.now(), sum(cpu_seconds(p) for p in pids)
                    try:
                        res, raw = gen.open(
                            r.port, wl, rate, args.connections, per_round, args.rate_warmup, path
                        )
                    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                        runs[n].append({"error": str(exc)})
                        break
                    cores1, cpu1 = CoreTimes.now(), sum(cpu_seconds(p) for p in pids)
                    run = {
                        **asdict(res),
                        "max_backlog": raw.get("max_backlog"),
                        "other_core0": cores0.other(cores1, SERVER_CORE, cpu1 - cpu0),
                        "other_core1": cores0.other(cores1, LOADGEN_CORE, res.loadgen_cpu_s),
                    }
                    retry = (
                        _disturbance(run) > OTHER_WARN
                        and attempt < args.retries
                        and bench.patience.allow(per_round + args.rate_warmup)
                    )
                    if not retry:  # a disturbed round is replaced by its retry, not pooled beside it
                        samples[n].extend(int(x) for x in path.read_text().split())
                        runs[n].append({**run, "attempt": attempt + 1})
                        break
    for n, values in samples.items():
        ok_runs = [r for r in runs[n] if "error" not in r]
        if not values or not ok_runs:
            table[n] = {"status": "n/a", "reason": "; ".join(r.get("error", "") for r in runs[n])[:300]}
            continue
        values.sort()
        duration = sum(r["duration"] for r in ok_runs)
        table[n] = {
            "status": "ok",
            "requests": len(values),
            "achieved_rps": len(values) / duration,
            "p50_ms": _pct(values, 50),
            "p99_ms": _pct(values, 99),
            "p99_9_ms": _pct(values, 99.9),
            "max_ms": values[-1] / 1e6,
            "errors": sum(r["errors"] for r in ok_runs),
            "max_backlog": max(r.get("max_backlog") or 0 for r in ok_runs),
            "round_p99_ms": [r["p99_ms"] for r in ok_runs],
            "other_core0": _max_of(r["other_core0"] for r in ok_runs),
            "other_core1": _max_of(r["other_core1"] for r in ok_runs),
        }
    direct = table.get("direct", {})
    for n, row in table.items():
        if n != "direct" and row.get("status") == "ok" and direct.get("status") == "ok":
            row["p50_added_ms"] = row["p50_ms"] - direct["p50_ms"]
            row["p99_added_ms"] = row["p99_ms"] - direct["p99_ms"]
    if direct.get("status") == "ok":
        # How far direct's own p99 moved between rounds: the platform's noise floor for this test.
        direct["p99_round_spread_ms"] = max(direct["round_p99_ms"]) - min(direct["round_p99_ms"])
    return {
        "status": "ok",
        "rate": rate,
        "basis": f"half of {basis_target}'s GET /page max ({max_rps:.0f} req/s)",
        "rounds": args.rounds,
        "seconds_per_round": per_round,
        "connections": args.connections,
        "targets": table,
    }


def _max_of(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _other_text(row: dict[str, Any]) -> str:
    """Interference on core 0 / core 1 in %, e.g. ``0/3``."""
    c0, c1 = row.get("other_core0"), row.get("other_core1")
    return f"{_fmt(None if c0 is None else c0 * 100, '.0f')}/{_fmt(None if c1 is None else c1 * 100, '.0f')}"


def _pct(sorted_ns: list[int], p: float) -> float:
    return sorted_ns[max(1, math.ceil(p / 100 * len(sorted_ns))) - 1] / 1e6


def _rps(results: dict[str, Any], target: str, wl: str) -> float | None:
    entry = results.get(target, {}).get("workloads", {}).get(wl, {})
    return entry.get("rps") if entry.get("status") == "ok" else None


def ratios(
    results: dict[str, Any], workloads: Iterable[Workload] = WORKLOADS
) -> dict[str, dict[str, float | None]]:
    pairs = [("guard", "baseline"), ("guard", "mitmproxy"), ("guard", "direct"), ("baseline", "direct")]
    pairs += [("mitmproxy", "direct")]
    if "nginx" in results:
        pairs += [("guard", "nginx"), ("nginx", "direct")]
    workloads = list(workloads)
    out: dict[str, dict[str, float | None]] = {}
    for a, b in pairs:
        row: dict[str, float | None] = {}
        for wl in workloads:
            x, y = _rps(results, a, wl.key), _rps(results, b, wl.key)
            row[wl.key] = x / y if x and y else None
        out[f"{a}/{b}"] = row
    return out


def check_targets(ratio: dict[str, dict[str, float | None]], latency: dict[str, Any]) -> list[dict[str, Any]]:
    def verdict(value: float | None, ok: bool) -> str:
        return "n/a" if value is None else ("PASS" if ok else "FAIL")

    checks: list[dict[str, Any]] = []
    v = ratio["guard/baseline"]["page"]
    checks.append(
        {
            "target": "guard >= 0.9x baseline throughput (GET /page, pass-through)",
            "value": v,
            "unit": "x",
            "result": verdict(v, v is not None and v >= 0.9),
        }
    )
    for wl in WORKLOADS:
        v = ratio["guard/mitmproxy"][wl.key]
        checks.append(
            {
                "target": f"guard >= 7x mitmproxy throughput ({wl.label})",
                "value": v,
                "unit": "x",
                "result": verdict(v, v is not None and v >= 7),
            }
        )
    added = latency.get("targets", {}).get("guard", {}).get("p99_added_ms")
    checks.append(
        {
            "target": "guard p99 added latency <= 1 ms at half max rate",
            "value": added,
            "unit": "ms",
            "result": verdict(added, added is not None and added <= 1.0),
        }
    )
    return checks


# --------------------------------------------------------------------------------------------
# reporting


def environment(gen: LoadGen, pinning: Pinning) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    model = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            model = match.group(1).strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "mitmproxy": version("mitmproxy"),
        "loadgen": gen.name,
        "pinning": pinning.note,
    }


def _fmt(v: float | None, spec: str, na: str = "n/a") -> str:
    return na if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _warn_other(lines: list[str], worst: float) -> None:
    if worst > OTHER_WARN:
        lines.append(
            f"WARNING: other processes took up to {worst * 100:.0f}% of a benchmark core during a run; "
            "those rows are disturbed -- re-run on a quiet machine"
        )


def _probe_text(entry: dict[str, Any]) -> str:
    before, after = entry["probe"], entry.get("probe_after") or entry["probe"]
    if before["ok"] and after["ok"]:
        return "ok"
    return f"before load {before['detail']}; after {after['detail']}"


def report(data: dict[str, Any]) -> str:
    env, cfg, results = data["environment"], data["config"], data["results"]
    lines = [
        f"loginguard benchmark  {env['date']}",
        f"machine   {env['cpu_model']}, {env['cores']} cores, Linux {env['kernel']}",
        f"software  Python {env['python']}, aiohttp {env['aiohttp']}, uvloop {env['uvloop']}, "
        f"mitmproxy {env['mitmproxy']}",
        f"load      {env['loadgen']}, closed loop, {cfg['connections']} keep-alive connections, "
        f"{cfg['duration']:g} s per run after {cfg['warmup']:g} s warm-up",
        f"pinning   {env['pinning']} (upstream shares core {SERVER_CORE} with the target)",
        "",
        f"{'target':<10} {'workload':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU us/req':>10} {'core0 %':>7} {'lg %':>5} {'other %':>8} {'errors':>7}  check",
    ]
    worst_other = 0.0
    for name in TARGETS:
        r = results.get(name)
        if r is None:
            continue
        if r["status"] != "ok":
            lines.append(f"{name:<10} {r['reason'][:400]}")
            continue
        for wl in WORKLOADS:
            e = r["workloads"][wl.key]
            if e["status"] != "ok":
                lines.append(f"{name:<10} {wl.label:<12} {e['reason'][:120]}")
                continue
            worst_other = max(worst_other, _max_of([e["other_core0"], e["other_core1"]]) or 0.0)
            lines.append(
                f"{name:<10} {wl.label:<12} {e['rps']:>9.0f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f} "
                f"{e['cpu_us_per_req']:>10.1f} {e['core0_util'] * 100:>7.0f} {e['loadgen_util'] * 100:>5.0f} "
                f"{_other_text(e):>8} "
                f"{e['errors']:>7}  {_probe_text(e)}" + (f" (try {e['attempt']})" if e["attempt"] > 1 else "")
            )
        for note in r.get("notes", []):
            lines.append(f"{'':<10} note: {note}")
    _warn_other(lines, worst_other)
    lines += ["", f"{'throughput ratio':<22}" + "".join(f"{wl.label:>13}" for wl in WORKLOADS)]
    for pair, row in data["ratios"].items():
        lines.append(
            f"{pair:<22}"
            + "".join(
                f"{_fmt(row[wl.key], '.2f', 'n/a ') + 'x' * (row[wl.key] is not None):>13}"
                for wl in WORKLOADS
            )
        )
    lat = data["latency"]
    lines.append("")
    if lat["status"] != "ok":
        lines.append(f"added latency: n/a ({lat['reason']})")
    else:
        lines.append(
            f"added latency: open loop at {lat['rate']:.0f} req/s = {lat['basis']}, GET /page, "
            "bench/loadgen.py, "
            f"{lat['rounds']} interleaved rounds x {lat['seconds_per_round']:.1f} s, samples pooled"
        )
        lines.append(
            f"{'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>7} "
            f"{'p50 added':>10} {'p99 added':>10} {'other %':>8}  per-round p99 ms"
        )
        for name, row in lat["targets"].items():
            if row["status"] != "ok":
                lines.append(f"{name:<10} n/a: {row['reason']}")
                continue
            lines.append(
                f"{name:<10} {row['achieved_rps']:>9.0f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                f"{row['p99_9_ms']:>9.3f} {row['errors']:>7} "
                f"{_fmt(row.get('p50_added_ms'), '+.3f', '-'):>10} "
                f"{_fmt(row.get('p99_added_ms'), '+.3f', '-'):>10} "
                f"{_other_text(row):>8}  " + " ".join(f"{x:.3f}" for x in row["round_p99_ms"])
            )
        spread = lat["targets"].get("direct", {}).get("p99_round_spread_ms")
        if spread is not None:
            lines.append(f"noise floor: direct's p99 moved by {spread:.3f} ms between rounds")
        rows = [r for r in lat["targets"].values() if r.get("status") == "ok"]
        _warn_other(lines, _max_of([_max_of([r["other_core0"], r["other_core1"]]) for r in rows]) or 0.0)
    lines += ["", "targets"]
    for c in data["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}{c['unit']}"
        lines.append(f"  [{c['result']:<4}] {c['target']:<62} {value}")
    lines.append(
        f"\nelapsed {data['elapsed_s']:.0f} s "
        f"(of which {data['patience_s']:.0f} s waiting for quiet or re-running disturbed runs)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per run (default 10, --quick 3)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--quick", action="store_true", help="short runs, about a minute in all")
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    p.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="closed-loop generator"
    )
    p.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS), help=f"subset of {','.join(TARGETS)} (nginx: opt-in)"
    )
    p.add_argument(
        "--guard-config", help="guard.yaml to derive the guard's config from (default: shipped one)"
    )
    p.add_argument("--rounds", type=int, help="added-latency test: interleaved rounds (default 5, --quick 2)")
    p.add_argument(
        "--retries", type=int, help="re-runs of a run that other processes disturbed (default 1, --quick 0)"
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs) and print it")
    args = p.parse_args()
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    args.warmup = 1.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    args.patience = 10.0 if args.quick else 60.0
    args.rate_warmup = 0.5
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(names) - set(TARGETS)
    if bad or args.duration <= 0 or args.connections < 1:
        p.error(f"unknown targets {sorted(bad)}" if bad else "--duration > 0 and --connections >= 1")
    args.target_list = ["direct"] + [t for t in TARGETS[1:] if t in names]
    return args


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    pinning = Pinning()
    if pinning.enabled:
        os.sched_setaffinity(0, {LOADGEN_CORE})  # this script idles beside the load generator
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    tmp = Path(tempfile.mkdtemp(prefix="loginguard-bench-"))
    procs = Processes(tmp, pinning)
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and wrk is None:
        raise SystemExit("--loadgen wrk: wrk not found (apt-get install wrk)")
    pygen = PyLoadGen(pinning, tmp)
    gen: LoadGen = Wrk(pinning, tmp, wrk) if wrk and args.loadgen != "python" else pygen
    env = environment(gen, pinning)
    print(
        f"loginguard benchmark: {', '.join(args.target_list)}; {env['loadgen']}; tmp {tmp}", file=sys.stderr
    )
    results: dict[str, Any] = {}
    bench = Bench(args, tmp, procs, pinning)
    try:
        bench.start_upstream()
        for name in args.target_list:
            print(f"  measuring {name} ...", file=sys.stderr, flush=True)
            try:
                with bench.target(name) as running:
                    results[name] = measure_throughput(bench, gen, name, running, args)
                if name == "guard":  # show that request logging really was on
                    log = tmp / "guard.log"
                    lines = log.read_bytes().count(b"\n") if log.exists() else 0
                    results[name]["notes"].append(f"guard log file: {lines} lines")
            except TargetUnavailable as exc:
                results[name] = {"status": "n/a", "reason": f"n/a: {exc}"}
                print(f"    {name}: n/a: {exc}", file=sys.stderr)
        print("  added-latency test ...", file=sys.stderr, flush=True)
        latency = measure_added_latency(bench, pygen, results, args)
    finally:
        release(procs, tmp, args.keep_tmp)
    ratio = ratios(results)
    data = {
        "environment": env,
        "config": {
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "quick": args.quick,
            "targets": args.target_list,
        },
        "results": results,
        "ratios": ratio,
        "latency": latency,
        "checks": check_targets(ratio, latency),
        "patience_s": bench.patience.spent,
        "elapsed_s": time.monotonic() - started,
    }
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
