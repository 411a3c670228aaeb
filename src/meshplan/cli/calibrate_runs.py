"""`meshplan calibrate --runs FILE`: fit the cluster presets' efficiency factors to runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meshplan.cli.render import console, print_json
from meshplan.specs.io import CALIBRATION_FILE
from meshplan.validate.calibrate import calibrate, calibration_toml
from meshplan.validate.rows import load_runs


def _stats(errors: list[float]) -> dict[str, float | int | None]:
    if not errors:
        return {"count": 0, "median_abs_error": None, "p90_abs_error": None, "bias": None}
    e = np.asarray(errors)
    return {"count": len(e), "median_abs_error": float(np.median(np.abs(e))),
            "p90_abs_error": float(np.percentile(np.abs(e), 90)), "bias": float(e.mean())}


def calibrate_runs(runs: str | None, write: bool, loso: bool, json_out: bool) -> None:
    """Fit, report in-sample and held-out error, and optionally write the calibration file."""
    rows = load_runs(Path(runs) if runs else None)
    result = calibrate(rows, leave_one_source_out=loso,
                       progress=None if json_out else lambda msg: console.print(msg))
    headline = {r["id"] for r in rows if not r["is_sweep"]}
    summary: dict[str, Any] = {
        "factors": result.factors,
        "in_sample": {"all": _stats(list(result.in_sample.values())),
                      "headline": _stats([e for i, e in result.in_sample.items()
                                          if i in headline])},
        "held_out": {"all": _stats(list(result.held_out.values())),
                     "headline": _stats([e for i, e in result.held_out.items()
                                         if i in headline])},
    }
    if write:
        CALIBRATION_FILE.write_text(calibration_toml(result, runs or "shipped published runs"))
    if json_out:
        print_json(summary)
        return
    for group, f in sorted(result.factors.items()):
        console.print(f"{group:18} " + "  ".join(f"{k}={v:.4g}" for k, v in f.items()))
    for kind in ("in_sample", "held_out"):
        for subset, s in summary[kind].items():
            if s["count"]:
                console.print(f"{kind:9} {subset:8} n={s['count']:>4}  median |err| "
                              f"{s['median_abs_error']:.1%}  p90 {s['p90_abs_error']:.1%}  "
                              f"bias {s['bias']:+.1%}")
    if write:
        console.print(f"wrote {CALIBRATION_FILE}")
