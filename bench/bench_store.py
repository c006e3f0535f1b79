"""The memory store at scale: cost per login batch, the longest stall, and what a full garbage
collection costs once it is full.

The memory store holds what an attack leaves (counters and distinct sets per address,
subnet and username, a vault token per page view), up to ``store.max_keys``.  Averages hide
what matters at that size: a single step that stalls the event loop -- a dict rebuilt as it
grows or churns, a full collection reading a table of a million entries -- delays every
request in flight.  So this records every batch's time and reports the stalls.

What is measured, in process (no HTTP):

* ``--batches`` batches shaped like a login under credential stuffing: a counter per address
  and per username, distinct sets (usernames per address and per /24, addresses per
  username), a read, and a vault token.  Addresses and usernames are random, so nearly
  every batch creates keys: the store grows toward its cap, as in ``bench/soak.py``.
* mean µs per batch, and every batch slower than ``--stall-ms`` (default 3 ms);
* ``gc.collect()`` at the end: the best of three, with start-up frozen first
  (``gc.freeze``) as the worker does, so it reads only what the store built;
* the peak RSS (``ru_maxrss``).

The worker's collector thresholds are used (``guard.supervisor.settle_heap``).  Compare
two versions of the store by running this from each checkout: ratios, on one machine, in
one sitting.

  .venv/bin/python bench/bench_store.py [--batches 150000] [--max-keys 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guard.store import AddDistinct, Count, Hit, Put  # noqa: E402
from guard.store.memory import MemoryStore  # noqa: E402
from guard.supervisor import settle_heap  # noqa: E402

W = 600.0
T0 = 1_700_000_004.0


async def run(batches: int, max_keys: int, stall_ms: float, seed: int = 1) -> dict[str, Any]:
    settle_heap()
    store = MemoryStore(max_keys=max_keys)
    rnd = random.Random(seed)
    stalls: list[tuple[int, float]] = []
    total = 0.0
    for i in range(batches):
        ip = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
        user = f"user{rnd.randrange(2_000_000)}"
        ops = [
            Hit(f"ip:{ip}", W), Hit(f"user:{user}", W),
            AddDistinct(f"uip:{user}", W, ip), AddDistinct(f"ipu:{ip}", W, user),
            AddDistinct(f"net:{ip.rsplit('.', 1)[0]}", W, user),
            Count(f"ip:{ip}", 3600), Put(f"pii:{i}", b"x" * 120, 3600),
        ]
        started = time.perf_counter()
        await store.execute(ops, T0 + i * 0.003)
        took = time.perf_counter() - started
        total += took
        if took * 1e3 > stall_ms:
            stalls.append((i, round(took * 1e3, 1)))
    full = min(_timed(gc.collect) for _ in range(3))
    return {
        "batches": batches,
        "keys": len(store),
        "mean_us_per_batch": round(total / batches * 1e6, 1),
        "stalls": len(stalls),
        "worst_stall_ms": max((ms for _, ms in stalls), default=0.0),
        "stall_list": stalls[:50],
        "full_collection_ms": round(full * 1e3, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=150_000)
    ap.add_argument("--max-keys", type=int, default=1_000_000)
    ap.add_argument("--stall-ms", type=float, default=3.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args.batches, args.max_keys, args.stall_ms))
    print(f"keys {out['keys']:,} after {out['batches']:,} batches (max_keys {args.max_keys:,})")
    print(f"mean {out['mean_us_per_batch']} µs per batch of 7 operations")
    print(f"stalls over {args.stall_ms} ms: {out['stalls']}, worst {out['worst_stall_ms']} ms")
    print(f"full collection at the end: {out['full_collection_ms']} ms")
    print(f"peak RSS: {out['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
