"""Accuracy of the serving simulator on published serving runs: in-sample and
leave-one-source-out (issue 11).

Fits the engine profiles' overheads on every run (`meshplan serve calibrate`, what ships in
presets/serving_calibration.toml), then predicts each source's runs at the fit made without
it. Prints per scenario and per source: median / p90 |error|, mean error, the share of
(row, metric) pairs predicted; the rank correlation inside each source / model / GPU group;
the worst rows. `--write` stores the fit in the shipped calibration file.

Run: python benchmarks/serve_accuracy.py [--runs FILE] [--write]   (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

from meshplan.serve.engines import SERVING_CALIBRATION
from meshplan.serve.validate import load_serving_runs
from meshplan.serve.validate.calibrate import calibrate, calibration_toml
from meshplan.serve.validate.report import rank_groups, summarise


def line(label: str, s: dict[str, Any]) -> str:
    if not s["count"]:
        return f"  {label:<34} {'-':>7} {'-':>7} {'-':>7} {s['pairs']:>5}"
    return (f"  {label:<34} {s['median_abs_error']:>7.1%} {s['p90_abs_error']:>7.1%} "
            f"{s['bias']:>+7.1%} {s['count']:>5}/{s['pairs']:<5}")


def by_source(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[str(r["source"])].append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None)
    ap.add_argument("--write", action="store_true",
                    help=f"write the fit to {SERVING_CALIBRATION}")
    args = ap.parse_args()
    runs = load_serving_runs(args.runs)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 200 == 0 or done == total:
            print(f"  {done}/{total} row predictions, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)

    fit = calibrate(runs, progress=progress)
    print(f"{len(runs)} runs, {time.perf_counter() - t0:.0f} s")
    for engine, (it, blk) in sorted(fit.fitted.items()):
        print(f"  {engine}: iteration_overhead_s {it:.3g}, block_overhead_s {blk:.3g} "
              f"({fit.rows_per_engine[engine]} runs)")
    print(f"\n  {'':<34} {'median':>7} {'p90':>7} {'bias':>7} {'pairs':>11}")
    for name, rows in (("in-sample", fit.in_sample), ("leave one source out", fit.loso)):
        print(name)
        for scenario, s in summarise(rows).items():
            print(line(scenario, s))
        for source, sel in sorted(by_source(rows).items()):
            print(line(f"{source}", summarise(sel)["all"]))
    print("\nrank correlation (held-out predictions), groups of >= 3 rows")
    rhos = rank_groups(fit.loso, runs)
    for g in rhos:
        rho = "-" if g["spearman"] is None else f"{g['spearman']:+.2f}"
        print(f"  {rho:>6}  {g['source']} {g['model']} {g['gpu']} {g['engine']} "
              f"{g['metric']} ({g['rows']} rows)")
    defined = [g["spearman"] for g in rhos if g["spearman"] is not None]
    if defined:
        print(f"  {sum(r >= 0.8 for r in defined)} of {len(defined)} groups >= 0.8, "
              f"median {np.median(defined):+.2f}")
    print("\nworst held-out (row, metric) pairs")
    pairs = [(abs(m["error"]), r["id"], k, m) for r in fit.loso
             for k, m in r["metrics"].items() if m["error"] is not None]
    for _, rid, k, m in sorted(pairs, reverse=True)[:12]:
        print(f"  {m['error']:+7.1%}  {rid} {k}: measured {m['measured']:.4g}, "
              f"predicted {m['predicted']:.4g}")
    skipped = [r for r in fit.loso if r["skipped"]]
    print(f"\n{len(skipped)} rows not predicted")
    for r in skipped:
        print(f"  {r['id']}: {r['skipped']}")
    if args.write:
        SERVING_CALIBRATION.write_text(calibration_toml(fit, args.runs or "the shipped "
                                       "published_serving_runs.json"))
        print(f"wrote {SERVING_CALIBRATION}")


if __name__ == "__main__":
    main()
