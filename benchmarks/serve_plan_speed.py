"""Speed of `meshplan serve plan` (issue 12's target: Llama-3-70B on 16 H100s, Poisson, 1,024
in / 256 out, SLO p99 TTFT <= 2 s and p99 TPOT <= 100 ms: a ranked, simulated table with at
least one disaggregated plan in <= 60 s on 2 cores).

    PYTHONPATH=src python benchmarks/serve_plan_speed.py [--workers 2]

Prints the wall seconds of the search, how many deployments it enumerated, simulated and
how many simulations it ran, and the table (`meshplan serve plan` prints the same); exits 1
when the target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time

from meshplan.cli.serve_plan_cmd import _print_plan
from meshplan.serve.plan import plan

TARGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    r = plan("llama3-70b", "dgx-h100", 16, 1024, 256, 2000.0, 100.0, workers=args.workers)
    wall = time.perf_counter() - t0
    _print_plan(r)
    disagg = any(p.disaggregated for p in r.plans)
    print(f"search: {wall:.1f} s wall on {args.workers} workers; {r.candidates} deployments, "
          f"{r.simulated} simulated, {r.simulations} simulations; disaggregated plan shown: "
          f"{disagg}")
    return 0 if wall <= TARGET_S and disagg and all(p.metrics for p in r.plans) else 1


if __name__ == "__main__":
    sys.exit(main())
