"""Measures guard.iplists against its budgets on a 1,000,000-CIDR reputation list.

Budgets (for 1M CIDRs, ~80% IPv4 / 20% IPv6): lookup <= 10 us, memory <= 150 MB,
load (parse + merge + build, from a file on disk) <= 5 s.

What is measured, and how:

* The list: random networks, IPv4 with prefix /20-/32 and IPv6 /32-/128 (uniform), host
  bits left set on purpose (the parser clears them).  The IPv4 range keeps merging modest,
  so most lines survive as ranges: a harder case for memory and lookup than /8-heavy lists,
  which collapse to a few ranges.  Written to a temporary file first, outside the timings.
* load: wall time of ``read_list(path)``: reading, parsing, sorting, merging, building.
* memory: resident set size from ``/proc/self/status`` (not tracemalloc, which would slow the
  parse several times and miss array buffers' allocator overhead).  "retained" is VmRSS after
  the load minus before it, after ``gc.collect()``; "peak" is VmHWM (after resetting it via
  ``/proc/self/clear_refs``) minus the starting RSS: what a reload briefly needs on top of
  the running process.  The PASS/FAIL uses the larger of the two.  "arrays" is the exact
  size of the set's own storage.
* lookup: median and p99 of 100k ``IPSet.contains`` calls, each timed alone with
  ``perf_counter_ns`` (so about 0.1 us of timer overhead is included).  Half the addresses are
  drawn from inside listed networks (hits), half at random (mostly misses); 20% are IPv6,
  and all are distinct, so the parse cache mostly misses (the worst case; a real client
  repeats its address).

  .venv/bin/python bench/bench_iplists.py [--count 1000000] [--lookups 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, like the other bench tools
    sys.path.insert(0, str(REPO))

from guard.iplists import IPSet, read_list  # noqa: E402

LOOKUP_US = 10.0
MEMORY_MB = 150.0
LOAD_S = 5.0
V6_SHARE = 0.2
V4_PREFIXES = (20, 32)
V6_PREFIXES = (32, 128)


def status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def v4_text(n: int) -> str:
    return socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))


def v6_text(n: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))


def generate(path: Path, count: int, rng: random.Random, keep: int) -> list[tuple[int, int, int]]:
    """Write ``count`` CIDR lines; return ``keep`` of them as (version, first, size) for hit lookups."""
    kept: list[tuple[int, int, int]] = []
    every = max(1, count // keep)
    with path.open("w") as f:
        for i in range(count):
            if rng.random() < V6_SHARE:
                n, plen, bits = rng.getrandbits(128), rng.randint(*V6_PREFIXES), 128
                f.write(f"{v6_text(n)}/{plen}\n")
            else:
                n, plen, bits = rng.getrandbits(32), rng.randint(*V4_PREFIXES), 32
                f.write(f"{v4_text(n)}/{plen}\n")
            if i % every == 0:
                size = 1 << (bits - plen)
                kept.append((4 if bits == 32 else 6, n & ~(size - 1), size))
    return kept


def lookup_addresses(kept: list[tuple[int, int, int]], count: int, rng: random.Random) -> list[str]:
    out: set[str] = set()
    while len(out) < count:
        if len(out) % 2 == 0:
            version, first, size = rng.choice(kept)
            n = first + rng.randrange(size)
        else:
            version = 6 if rng.random() < V6_SHARE else 4
            n = rng.getrandbits(128 if version == 6 else 32)
        out.add(v4_text(n) if version == 4 else v6_text(n))
    addrs = list(out)
    rng.shuffle(addrs)
    return addrs


def measure_lookups(ipset: IPSet, addrs: list[str]) -> tuple[list[float], int]:
    contains, clock = ipset.contains, time.perf_counter_ns
    times: list[float] = []
    hits = 0
    for a in addrs:
        t0 = clock()
        hit = contains(a)
        t1 = clock()
        times.append((t1 - t0) / 1000)
        hits += hit
    return times, hits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1_000_000, help="CIDRs in the generated list")
    p.add_argument("--lookups", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=20240501)
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    args = p.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench-iplists-") as tmp:
        path = Path(tmp) / "list.netset"
        t = time.perf_counter()
        kept = generate(path, args.count, rng, keep=50_000)
        gen_s = time.perf_counter() - t
        addrs = lookup_addresses(kept, args.lookups, rng)
        del kept
        file_mb = path.stat().st_size / 1e6

        gc.collect()
        rss0 = status_kb("VmRSS")
        peak_ok = reset_peak()
        t = time.perf_counter()
        result = read_list(path)
        load_s = time.perf_counter() - t
        hwm = status_kb("VmHWM") if peak_ok else None
        gc.collect()
        rss1 = status_kb("VmRSS")

    ipset = result.ipset
    retained_mb = (rss1 - rss0) / 1024 if rss0 is not None and rss1 is not None else None
    peak_mb = (hwm - rss0) / 1024 if hwm is not None and rss0 is not None else None
    arrays_mb = (
        sum(
            a.buffer_info()[1] * a.itemsize
            for a in (
                ipset._v4s,
                ipset._v4e,
                ipset._v6sh,
                ipset._v6sl,
                ipset._v6eh,
                ipset._v6el,
            )
        )
        / 1e6
    )
    times, hits = measure_lookups(ipset, addrs)
    times.sort()
    median_us = statistics.median(times)
    p99_us = times[int(len(times) * 0.99)]
    mean_us = sum(times) / len(times)
    memory_mb = max(m for m in (retained_mb, peak_mb, 0.0) if m is not None)

    checks = [
        ("lookup (median)", f"{median_us:.2f} us", f"<= {LOOKUP_US:g} us", median_us <= LOOKUP_US),
        (
            "memory (max of retained, peak)",
            f"{memory_mb:.1f} MB",
            f"<= {MEMORY_MB:g} MB",
            memory_mb <= MEMORY_MB if retained_mb is not None else None,
        ),
        ("load (parse + build)", f"{load_s:.2f} s", f"<= {LOAD_S:g} s", load_s <= LOAD_S),
    ]
    print(
        f"list: {args.count:,} CIDRs ({file_mb:.1f} MB, {V6_SHARE:.0%} IPv6, v4 /{V4_PREFIXES[0]}-/"
        f"{V4_PREFIXES[1]}, v6 /{V6_PREFIXES[0]}-/{V6_PREFIXES[1]}), generated in {gen_s:.1f} s"
    )
    print(
        f"set:  {result.entries:,} entries, {result.bad} bad lines -> {ipset.ranges_v4:,} IPv4 + "
        f"{ipset.ranges_v6:,} IPv6 ranges after merging; arrays {arrays_mb:.1f} MB"
    )
    print(
        f"memory: retained {retained_mb if retained_mb is None else round(retained_mb, 1)} MB, "
        f"peak during load {peak_mb if peak_mb is None else round(peak_mb, 1)} MB (RSS, /proc/self/status)"
    )
    print(
        f"lookups: {len(addrs):,} ({hits / len(addrs):.0%} hits), median {median_us:.2f} us, "
        f"p99 {p99_us:.2f} us, mean {mean_us:.2f} us"
    )
    print()
    print(f"{'metric':<32} {'measured':>12} {'target':>12}  result")
    failed = False
    for name, value, target, ok in checks:
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        failed |= ok is False
        print(f"{name:<32} {value:>12} {target:>12}  {verdict}")

    if args.json:
        data: dict[str, Any] = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "count": args.count,
            "seed": args.seed,
            "file_mb": round(file_mb, 2),
            "entries": result.entries,
            "ranges_v4": ipset.ranges_v4,
            "ranges_v6": ipset.ranges_v6,
            "load_s": round(load_s, 3),
            "memory_retained_mb": retained_mb,
            "memory_peak_mb": peak_mb,
            "memory_arrays_mb": round(arrays_mb, 2),
            "memory_method": "VmRSS/VmHWM from /proc/self/status",
            "lookups": len(addrs),
            "hit_ratio": round(hits / len(addrs), 3),
            "lookup_median_us": round(median_us, 3),
            "lookup_p99_us": round(p99_us, 3),
            "lookup_mean_us": round(mean_us, 3),
            "targets": {"lookup_us": LOOKUP_US, "memory_mb": MEMORY_MB, "load_s": LOAD_S},
            "pass": not failed,
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
