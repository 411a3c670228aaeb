"""Does `meshplan serve plan` rank layouts as the shipped serving runs measured them (issue
12's target)? For each group of runs that differ only in layout (TP sizes, DP x TP: same
source, model, GPU, engine, precision and workload), every layout is simulated the way the
search simulates a candidate, on the run's own workload, and ranked by the search's two
objectives: output tokens/s (throughput) and tokens/s per GPU (goodput per GPU). Prints per
group the layouts, measured and simulated figures and Spearman's rho (groups of 3 or more
layouts), and overall: the mean rho and the share of layout pairs ordered alike
(`meshplan.serve.validate.layouts`).

    PYTHONPATH=src python benchmarks/serve_plan_ranking.py [--runs FILE]   (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys

from meshplan.serve.validate import load_serving_runs
from meshplan.serve.validate.layouts import layout_groups, pairs_agree, rank_group


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None, help="serving runs file (default: the shipped one)")
    args = ap.parse_args()
    groups = [g for g in map(rank_group, layout_groups(load_serving_runs(args.runs))) if g]
    if not groups:
        print("no group of runs differing only in layout")
        return 1
    totals = {False: [0, 0], True: [0, 0]}
    rhos: dict[bool, list[float]] = {False: [], True: []}
    for g in groups:
        print(g.label)
        for name, m, s, n in zip(g.layouts, g.measured, g.simulated, g.gpus, strict=True):
            print(f"    {name:<14} {n:>2} GPUs  measured {m:>9.1f} tok/s ({m / n:>8.1f}/GPU)  "
                  f"simulated {s:>9.1f} tok/s ({s / n:>8.1f}/GPU)")
        cells = []
        for per_gpu in (False, True):
            agree, pairs = pairs_agree(g, per_gpu)
            totals[per_gpu][0] += agree
            totals[per_gpu][1] += pairs
            rho = g.rho(per_gpu)
            if rho is not None:
                rhos[per_gpu].append(rho)
            name = "per GPU" if per_gpu else "tok/s"
            cells.append(f"{name}: rho {'-' if rho is None else f'{rho:+.2f}'}, "
                         f"{agree}/{pairs} pairs")
        print("    " + "; ".join(cells))
    print(f"\n{len(groups)} groups, {sum(len(g.layouts) for g in groups)} runs")
    for per_gpu in (False, True):
        name = "tokens/s per GPU" if per_gpu else "tokens/s"
        r = rhos[per_gpu]
        agree, pairs = totals[per_gpu]
        mean = f"{statistics.fmean(r):+.2f} over {len(r)} groups" if r else "-"
        print(f"{name:<17} mean Spearman {mean}; pairs ordered alike {agree}/{pairs} "
              f"({agree / pairs:.0%}); groups ranked exactly "
              f"{sum(x == 1.0 for x in r)}/{len(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
