"""Accuracy against published runs: in-sample and leave-one-source-out (issue 4).

Fits the per-accelerator factors on all runs (what ships in presets/calibration.toml), then
refits each accelerator group without one source at a time and predicts that source's runs.
Prints median / p90 absolute throughput error and bias for headline and sweep rows, per source,
in-sample next to held-out. Uses the closed-form pipeline (as the fit does); `meshplan validate`
prints the simulated figures.

Run: python benchmarks/validation_accuracy.py [--runs FILE]   (minutes on 2 cores; progress on
stderr)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict

import numpy as np

from meshplan.validate.calibrate import calibrate
from meshplan.validate.rows import load_runs


def stats(errors: list[float]) -> str:
    if not errors:
        return f"{'-':>6} {'-':>6} {'-':>7} {0:>4}"
    e = np.abs(np.array(errors))
    return (f"{np.median(e):>6.1%} {np.percentile(e, 90):>6.1%} {np.mean(errors):>+7.1%} "
            f"{len(errors):>4}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None)
    args = ap.parse_args()
    rows = load_runs(args.runs)
    meta = {r["id"]: r for r in rows}
    t0, c0 = time.perf_counter(), time.process_time()
    seen: list[str] = []

    def progress(what: str, done: int, total: int) -> None:
        if what not in seen:
            seen.append(what)
            print(f"[{time.perf_counter() - t0:5.0f} s] {what} ({done / total:.0%})",
                  file=sys.stderr)

    result = calibrate(rows, leave_one_source_out=True, progress=progress)
    print(f"fit + leave-one-source-out in {time.perf_counter() - t0:.0f} s "
          f"({time.process_time() - c0:.0f} s CPU)\n")
    print("fitted factors:")
    for group, f in sorted(result.factors.items()):
        print(f"  {group:18} " + "  ".join(f"{k}={v:.4g}" for k, v in f.items()))
    print("precision groups (runs / sources -> factor they fit):")
    for group, f in sorted(result.precision.items()):
        print(f"  {group:18} " + ", ".join(f"{k}: {n} runs / {m} src -> {t}"
                                          for k, (n, m, t) in f.items()))
    header = (f"\n{'subset':34} {'in-sample: med':>14} {'p90':>6} {'bias':>7} {'n':>4}   "
              f"{'held-out: med':>13} {'p90':>6} {'bias':>7} {'n':>4}")
    print(header)

    def line(name: str, keep) -> None:
        ins = [e for i, e in result.in_sample.items() if keep(meta[i])]
        out = [e for i, e in result.held_out.items() if keep(meta[i])]
        print(f"{name:34} {stats(ins):>32}   {stats(out):>32}")

    line("all", lambda r: True)
    line("headline (is_sweep false)", lambda r: not r["is_sweep"])
    line("sweep", lambda r: r["is_sweep"])
    fp8 = re.compile(r"fp8|float8", re.IGNORECASE)
    line("fp8 rows", lambda r: bool(fp8.search(str(r.get("precision") or ""))))
    line("bf16 rows", lambda r: not fp8.search(str(r.get("precision") or "")))
    by_source: dict[str, None] = defaultdict(lambda: None)
    for r in rows:
        by_source[r["source_id"]]
    for source in sorted(by_source):
        line(f"  {source}", lambda r, s=source: r["source_id"] == s)


if __name__ == "__main__":
    main()
