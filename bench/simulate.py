"""Run the attack simulator: ``python bench/simulate.py [--scale 1.0] [--json out.json]``.

The scenario and the rules are described in ``guard/demo/simulate.py``; this is
the command line around it (also available as ``guard simulate``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guard.demo.simulate import Scenario, check, report, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="population scale (1.0: 3,000 accounts)")
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sc = Scenario(seed=args.seed).scaled(args.scale)
    t0 = time.perf_counter()
    summary = asyncio.run(run(sc, progress=True))
    for line in report(summary):
        print(line)
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(ok for _, ok, _ in check(summary)) else 1


if __name__ == "__main__":
    sys.exit(main())
