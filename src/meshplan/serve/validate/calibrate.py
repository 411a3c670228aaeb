"""Fit the engine profiles' overheads to published serving runs, and report the error on runs
left out of the fit (leave one source out).

What is fitted, per engine profile (profiles of one engine's versions share a table,
`EngineProfile.fit_group`): the host overhead per iteration (`iteration_overhead_s`;
the eager figure keeps the profile's eager / graph ratio) and the fixed GPU time per block
(`block_overhead_s`). Kernel efficiencies stay the cluster data's: decode is bound by HBM
bandwidth, which the data sheets give, and prefill by GEMM efficiency, which the shipped
kernel measurements give.

How: every row is predicted once at every point of a grid of the two overheads (a row depends
only on its own engine profile's values, so profiles are fitted independently), each
(row, metric) pair giving |log(predicted / measured)|. A profile's fit is the grid point with
the smallest mean of that error, each source weighted equally (a 150-row sweep does not
outvote a 4-row source), each row's metrics sharing the row's weight. Leave one source out:
each source's rows are predicted at the point fitted without them.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.serve.engines import FITTED_KEYS, load_engine
from meshplan.serve.validate.case import Unbuildable
from meshplan.serve.validate.rebuild import build_case
from meshplan.serve.validate.report import validate_row

ITERATION_GRID_S = (0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3, 16e-3)
BLOCK_GRID_S = (3e-6, 12e-6, 48e-6, 192e-6)
"""Host time per step from a fraction of a millisecond (CUDA graphs, multi-step) to tens
(eager Python engines); block time from a graph-launched kernel's few microseconds to an
eager, unfused block's hundreds."""

Point = tuple[float, float]


@dataclass(frozen=True)
class Pair:
    row: str
    source: str
    metric: str
    log_error: float


@dataclass
class FitResult:
    fitted: dict[str, Point]
    """Per engine profile: (iteration_overhead_s, block_overhead_s) fitted on every source."""
    held_out: dict[str, Point]
    """Per source: the point its own rows were predicted at (fitted without them)."""
    in_sample: list[dict[str, Any]]
    """validate_row results at the full fit."""
    loso: list[dict[str, Any]]
    """validate_row results, each row at the fit without its source."""
    rows_per_engine: dict[str, int]


def _source(row: dict[str, Any]) -> str:
    return str((row.get("source") or {}).get("source_id") or row["id"])


def fit_group(engine: str) -> str:
    """The calibration table a profile reads (`EngineProfile.fit_group`)."""
    return load_engine(engine, calibration=None).fit_group or engine


def overheads(group: str, point: Point) -> dict[str, float]:
    """The profile values of a grid point (eager host time at the group's profile's ratio)."""
    profile = load_engine(group, calibration=None)
    ratio = profile.iteration_overhead_eager_s / max(profile.iteration_overhead_s, 1e-12)
    return {"iteration_overhead_s": point[0], "iteration_overhead_eager_s": point[0] * ratio,
            "block_overhead_s": point[1]}


def _objective(pairs: Iterable[Pair], rows_pairs: dict[str, int]) -> float:
    per_source: dict[str, float] = defaultdict(float)
    per_source_rows: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        per_source[p.source] += abs(p.log_error) / rows_pairs[p.row]
        per_source_rows[p.source].add(p.row)
    if not per_source:
        return math.inf
    return sum(v / len(per_source_rows[s]) for s, v in per_source.items()) / len(per_source)


def _pairs(result: dict[str, Any], source: str) -> list[Pair]:
    return [Pair(result["id"], source, k, math.log1p(m["error"]))
            for k, m in result["metrics"].items()
            if m["error"] is not None and m["error"] > -1]


def _row_on_grid(task: tuple[dict[str, Any], str, list[Point]]) -> list[dict[str, Any]]:
    row, group, points = task
    return [validate_row(row, overheads(group, p)) for p in points]


def calibrate(rows: list[dict[str, Any]], grid: Iterable[Point] | None = None,
              progress: Any = None, workers: int | None = None) -> FitResult:
    """Fit every engine profile the rows use, the rows spread over `workers` processes
    (default: one per core); `progress(done, total)` is told as rows finish."""
    points = list(grid) if grid is not None else list(itertools.product(ITERATION_GRID_S,
                                                                        BLOCK_GRID_S))
    if not points:
        raise MeshplanError("calibration grid is empty")
    engine_of: dict[str, str] = {}
    for row in rows:
        try:
            engine_of[row["id"]] = fit_group(build_case(row).spec.engine)
        except (Unbuildable, MeshplanError):
            continue
    results: dict[Point, dict[str, dict[str, Any]]] = {p: {} for p in points}
    todo = [(row, engine_of[row["id"]], points) for row in rows if row["id"] in engine_of]
    total, done = len(points) * len(todo), 0
    n_workers = min(workers or os.cpu_count() or 1, len(todo)) or 1
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers) as pool:
            for task, row_results in zip(todo, pool.map(_row_on_grid, todo), strict=True):
                for p, res in zip(points, row_results, strict=True):
                    results[p][task[0]["id"]] = res
                done += len(points)
                if progress is not None:
                    progress(done, total)
    else:
        for task in todo:
            for p, res in zip(points, _row_on_grid(task), strict=True):
                results[p][task[0]["id"]] = res
            done += len(points)
            if progress is not None:
                progress(done, total)
    source_of = {r["id"]: _source(r) for r in rows}
    pairs = {p: {rid: _pairs(res, source_of[rid]) for rid, res in results[p].items()}
             for p in points}
    rows_pairs = {rid: max(len(ps), 1) for rid, ps in pairs[points[0]].items()}

    def best(engine: str, exclude: str | None) -> Point:
        def score(p: Point) -> float:
            return _objective((x for rid, ps in pairs[p].items()
                               if engine_of[rid] == engine and source_of[rid] != exclude
                               for x in ps), rows_pairs)
        scores = {p: score(p) for p in points}
        finite = {p: s for p, s in scores.items() if math.isfinite(s)}
        if not finite:  # no other source uses this engine: the profile's own values
            profile = load_engine(engine, calibration=None)
            return min(points, key=lambda p: abs(math.log(p[0] / profile.iteration_overhead_s))
                       + abs(math.log(p[1] / profile.block_overhead_s)))
        return min(finite, key=lambda p: finite[p])

    engines = sorted(set(engine_of.values()))
    fitted = {e: best(e, None) for e in engines}
    in_sample, loso, held = [], [], {}
    for row in rows:
        rid = row["id"]
        engine = engine_of.get(rid)
        if engine is None:
            out = validate_row(row)
            in_sample.append(out)
            loso.append(out)
            continue
        point = best(engine, source_of[rid])
        held[source_of[rid]] = point
        in_sample.append(results[fitted[engine]][rid])
        loso.append(results[point][rid])
    counts: dict[str, int] = defaultdict(int)
    for e in engine_of.values():
        counts[e] += 1
    return FitResult(fitted, held, in_sample, loso, dict(counts))


def calibration_toml(result: FitResult, runs: str) -> str:
    """The fitted overheads as `presets/serving_calibration.toml`."""
    lines = ["# Engine overheads fitted by `meshplan serve calibrate` "
             "(meshplan/serve/validate/calibrate.py).",
             f"# Data: {runs}. Do not edit by hand: rerun the command.", ""]
    for engine, point in sorted(result.fitted.items()):
        values = overheads(engine, point)
        lines.append(f"# {result.rows_per_engine.get(engine, 0)} runs")
        lines.append(f"[{engine}]")
        lines.extend(f"{k} = {values[k]:.4g}" for k in FITTED_KEYS)
        lines.append('source = "meshplan serve calibrate"')
        lines.append("")
    return "\n".join(lines)
