"""`meshplan serve validate`: rebuild each published serving run, predict it, compare every
metric it reports, and summarise the errors by scenario."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshplan.errors import MeshplanError, from_validation_error
from meshplan.serve.validate.case import Unbuildable
from meshplan.serve.validate.predict import Overheads, flatten, predict
from meshplan.serve.validate.rebuild import build_case
from meshplan.specs.io import parse_json, read_text
from meshplan.validate.report import spearman, stats

RUNS_FILE = Path(__file__).resolve().parents[2] / "data" / "published_serving_runs.json"
COMPARED = ("prefill_time_ms", "decode_step_ms", "output_tokens_per_s",
            "output_tokens_per_s_per_gpu", "requests_per_s", "total_tokens_per_s", "ttft_ms",
            "tpot_ms", "e2e_ms", "normalized_latency_s_per_token")
"""The metric groups compared (`metrics.other` and the rest are not)."""


def load_serving_runs(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of a serving-runs file (default: the shipped copy)."""
    p = Path(path) if path is not None else RUNS_FILE
    if not p.is_file():
        raise MeshplanError(f"{p}: no such file")
    data = parse_json(read_text(p), str(p))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise MeshplanError(f"{p}: expected a JSON list of run objects")
    if not data:
        raise MeshplanError(f"{p}: no runs in the file")
    for i, r in enumerate(data):
        missing = [k for k in ("id", "scenario", "model", "hardware", "engine", "precision",
                               "parallelism", "workload", "scheduler", "metrics")
                   if not isinstance(r.get(k), (dict, str))]
        if missing:
            raise MeshplanError(f"{p}: row {i} ({r.get('id', '?')}) lacks {missing[0]!r}")
    return data


def measured(row: dict[str, Any]) -> dict[str, float]:
    """The row's comparable figures: finite and positive (a 0, negative or NaN figure has
    no relative error)."""
    m = row["metrics"]
    figures = flatten({k: m[k] for k in COMPARED if isinstance(m.get(k), (dict, int, float))})
    return {k: v for k, v in figures.items() if math.isfinite(v) and v > 0}


def validate_row(row: dict[str, Any], overheads: Overheads | None = None) -> dict[str, Any]:
    """One row's JSON: every measured metric with the prediction and the signed error."""
    truth = measured(row)
    out: dict[str, Any] = {"id": row["id"], "scenario": row["scenario"],
                           "source": (row.get("source") or {}).get("source_id"),
                           "metrics": {}, "skipped": None, "assumptions": []}
    read_as: dict[str, str] = {}
    pred = None
    try:
        case = build_case(row)
        out["assumptions"] = case.assumptions
        read_as = case.read_as
        pred = predict(case, overheads)
    except (Unbuildable, MeshplanError) as err:
        out["skipped"] = str(err)
    except ValidationError as err:  # a field's value out of range: this row, not the run
        out["skipped"] = str(from_validation_error(err, f"row {row['id']}"))
    except (TypeError, ValueError) as err:  # a field of the wrong type (text for a number)
        out["skipped"] = f"row {row['id']}: a field has the wrong type ({err})"
    if pred is not None and not pred.fits:
        out["skipped"] = f"predicted not to fit: {pred.why_not}"
    for key, value in truth.items():
        p = pred.metrics.get(read_as.get(key, key)) if pred is not None and pred.fits \
            else None
        out["metrics"][key] = {"measured": value, "predicted": p,
                               "error": None if p is None else p / value - 1.0}
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario and overall: count, median / p90 |error| and mean error over the
    (row, metric) pairs predicted, and the share of pairs predicted."""
    out: dict[str, Any] = {}
    for scenario in sorted({r["scenario"] for r in rows}) + ["all"]:
        sel = [r for r in rows if scenario in ("all", r["scenario"])]
        pairs = [m for r in sel for m in r["metrics"].values()]
        errors = [m["error"] for m in pairs if m["error"] is not None]
        out[scenario] = {**stats(errors), "pairs": len(pairs),
                         "predicted_share": len(errors) / len(pairs) if pairs else None}
    return out


def rank_groups(rows: list[dict[str, Any]], runs: list[dict[str, Any]],
                min_rows: int = 3) -> list[dict[str, Any]]:
    """Spearman correlation of predicted against measured values of one metric inside each
    (source, model, GPU, engine) group of at least `min_rows` predicted rows: does meshplan
    order the layouts, rates and lengths a source compares as the source measured them?"""
    by_id = {r["id"]: r for r in runs}
    groups: dict[tuple[str, str, str, str, str], list[tuple[float, float]]] = {}
    for r in rows:
        run = by_id[r["id"]]
        for key, m in r["metrics"].items():
            if m["predicted"] is None:
                continue
            g = (str(r["source"]), str(run["model"].get("key")),
                 str(run["hardware"].get("gpu_key")), str(run["engine"].get("name")), str(key))
            groups.setdefault(g, []).append((m["measured"], m["predicted"]))
    out = []
    for g, pts in sorted(groups.items()):
        if len(pts) >= min_rows:
            rho = spearman([p[0] for p in pts], [p[1] for p in pts])
            out.append({"source": g[0], "model": g[1], "gpu": g[2], "engine": g[3],
                        "metric": g[4], "rows": len(pts), "spearman": rho})
    return out


def validate(rows: list[dict[str, Any]], overheads: Overheads | None = None) -> dict[str, Any]:
    results = [validate_row(r, overheads) for r in rows]
    return {"rows": results, "summary": summarise(results),
            "rank_groups": rank_groups(results, rows)}
