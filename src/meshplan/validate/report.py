"""Validate every published run and summarise the errors.

`validate(rows)` rebuilds each run (`rows.build_case`), estimates it with the vectorised cost
model, compares on the source's own metric (`metrics.compare`) and returns the JSON contract
`{"rows": [...], "skipped": [...], "summary": {...}}`. Summaries use `throughput_error`
(positive: meshplan optimistic), split by source, by accelerator, headline vs sweep, with the
Spearman rank correlation of predicted vs measured throughput inside each sweep group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from meshplan.api import estimate
from meshplan.errors import MeshplanError, unknown_name
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef
from meshplan.validate.metrics import Comparison, compare, memory_job, pick_metric
from meshplan.validate.rows import Case, Skip, build_case


def _num_microbatches(row: dict[str, Any]) -> Any:
    other = row["other_metrics"] if isinstance(row["other_metrics"], dict) else {}
    return other.get("num_microbatches", "?")


SWEEP_GROUPS: dict[str, Callable[[dict[str, Any], str], str]] = {
    # Runs of one workload whose configurations differ: rank correlation is meaningful here.
    "zerobubble2024": lambda r, gpu: f"zerobubble {r['model_name']} m={_num_microbatches(r)}",
    "hagemann2024": lambda r, gpu: f"hagemann {r['model_name']} s={r['seq_length']}",
    "llmfoundry_bench": lambda r, gpu: f"llmfoundry {gpu} {r['model_name']}",
}


def sweep_group(row: dict[str, Any], gpu: str) -> str | None:
    if not row["is_sweep"]:
        return None
    fn = SWEEP_GROUPS.get(row["source_id"])
    return fn(row, gpu) if fn else f"{row['source_id']} {row['model_name']}"


def spearman(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None if undefined."""
    a, b = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    assert a.shape == b.shape
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if denom == 0 else float((ra * rb).sum() / denom)


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):  # ties share their average rank
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def stats(errors: Iterable[float]) -> dict[str, Any]:
    """Count, median and p90 of |error|, and the mean error (bias); None where empty."""
    e = np.asarray(list(errors), dtype=float)
    if not len(e):
        return {"count": 0, "median_abs_error": None, "p90_abs_error": None, "bias": None}
    return {"count": int(len(e)), "median_abs_error": float(np.median(np.abs(e))),
            "p90_abs_error": float(np.percentile(np.abs(e), 90)), "bias": float(e.mean())}


def _row_json(case: Case, cmp: Comparison, fits: bool) -> dict[str, Any]:
    row = case.row
    notes = list(case.assumptions) + list(cmp.notes)
    if cmp.memory is not None:
        notes.append("reported peak memory GB read as GiB (PyTorch memory statistics)")
    return {
        "id": row["id"], "source_id": row["source_id"], "metric": cmp.metric,
        "measured": cmp.measured, "predicted": cmp.predicted, "error": cmp.error,
        "throughput_error": cmp.throughput_error, "assumptions": notes, "gpu": case.gpu,
        "is_sweep": bool(row["is_sweep"]), "sweep_group": sweep_group(row, case.gpu),
        "memory": cmp.memory, "fits": fits,
    }


def validate_row(row: dict[str, Any], simulate: bool = True,
                 calibration: CalibrationRef = CALIBRATION_FILE
                 ) -> tuple[dict[str, Any], tuple[float, float]] | Skip:
    """One run: (row JSON, (measured, predicted) tokens/s per GPU) or a Skip.

    `simulate` as in `meshplan.estimate`: the pipeline part from the event simulation
    (default) or from the closed form (faster); `calibration` as in `specs.io.load_cluster`."""
    metric = pick_metric(row)
    if metric is None:
        return Skip(row["id"], "no measured throughput, time or utilisation figure")
    case = build_case(row, calibration)
    if isinstance(case, Skip):
        return case
    try:
        est = estimate(case.model, case.cluster, memory_job(case), case.plan, case.num_gpus,
                       simulate=simulate)
    except MeshplanError as err:
        return Skip(row["id"], f"plan illegal in meshplan: {err}")
    cmp = compare(case, est, metric)
    return _row_json(case, cmp, est.fits), (cmp.measured_tokens_per_s_per_gpu,
                                            cmp.predicted_tokens_per_s_per_gpu)


def select(rows: list[dict[str, Any]], source: str | None = None,
           headline_only: bool = False) -> list[dict[str, Any]]:
    if source is not None:
        known = sorted({r["source_id"] for r in rows})
        if source not in known:
            raise unknown_name("source", source, known)
        rows = [r for r in rows if r["source_id"] == source]
    if headline_only:
        rows = [r for r in rows if not r["is_sweep"]]
    return rows


def validate(rows: list[dict[str, Any]], simulate: bool = True,
             calibration: CalibrationRef = CALIBRATION_FILE) -> dict[str, Any]:
    """Validate runs (already loaded and filtered): rows, skipped and summary."""
    out_rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    throughput: dict[str, tuple[float, float]] = {}
    for row in rows:
        result = validate_row(row, simulate, calibration)
        if isinstance(result, Skip):
            skipped.append({"id": result.id, "reason": result.reason})
            continue
        out, tps = result
        out_rows.append(out)
        throughput[out["id"]] = tps
    return {"rows": out_rows, "skipped": skipped,
            "summary": summarise(out_rows, skipped, throughput)}


def memory_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak-memory error (predicted vs reported, `metrics.reported_kind`) overall and per
    source. Nothing is fitted to these rows (`cost.train.allocator`), so every figure is also
    its own leave-one-source-out figure."""
    with_mem = [r for r in rows if r["memory"] is not None]
    groups: dict[str, list[float]] = defaultdict(list)
    for r in with_mem:
        groups[r["source_id"]].append(r["memory"]["error"])
    return {**stats(r["memory"]["error"] for r in with_mem),
            "by_source": {k: stats(v) for k, v in sorted(groups.items())},
            "measured_not_fitting": [r["id"] for r in with_mem if not r["fits"]]}


def summarise(rows: list[dict[str, Any]], skipped: list[dict[str, str]],
              throughput: dict[str, tuple[float, float]]) -> dict[str, Any]:
    def by(key: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            groups[key(r)].append(r["throughput_error"])
        return {k: stats(v) for k, v in sorted(groups.items())}

    sweep: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["sweep_group"] is not None:
            sweep[r["sweep_group"]].append(r)
    groups = {}
    for name, members in sorted(sweep.items()):
        meas = [throughput[r["id"]][0] for r in members]
        pred = [throughput[r["id"]][1] for r in members]
        groups[name] = {**stats(r["throughput_error"] for r in members),
                        "spearman": spearman(pred, meas)}
    reasons: dict[str, int] = defaultdict(int)
    for s in skipped:
        reasons[s["reason"]] += 1
    return {
        "compared": len(rows),
        "skipped": len(skipped),
        "all": stats(r["throughput_error"] for r in rows),
        "headline": stats(r["throughput_error"] for r in rows if not r["is_sweep"]),
        "sweep": stats(r["throughput_error"] for r in rows if r["is_sweep"]),
        "by_source": by(lambda r: r["source_id"]),
        "by_accelerator": by(lambda r: r["gpu"]),
        "sweep_groups": groups,
        "memory": memory_summary(rows),
        "oom_misses": [r["id"] for r in rows if not r["fits"]],
        "skip_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    }
