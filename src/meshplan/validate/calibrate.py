"""Fit a few efficiency factors per accelerator to published runs, and measure the fit honestly.

Procedure (`meshplan calibrate --runs FILE`):
1. Rebuild every run (`rows.build_case`) and convert its measurement to a measured step time
   on the source's own accounting (`metrics.compare`).
2. Group runs by the silicon of the accelerator they map to (`Accelerator.calibration_key`:
   one group, and one table of the calibration file, per die and operating point; every
   preset and cluster file declaring that silicon reads the table).
3. For each group, fit `gemm_scale`, `attention_scale` (multipliers on the measured efficiency
   curves), `kernel_overhead` (seconds per layer and pass) and `pp_overlap` (share of pipeline
   send/receive hidden behind compute) by coordinate descent with a
   golden-section search per parameter, minimising the weighted mean |log(predicted step /
   measured step)|; each source gets equal weight inside a group, so a 178-row sweep does not
   outvote a 3-row paper. Nothing is fitted per row.
4. Leave-one-source-out: refit each group without one source and predict that source's runs
   with the refitted factors; the errors on held-out runs are the honest figure.
The fit uses the closed-form pipeline (fast); `meshplan validate` reports the simulated one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshplan.cost.train.step import evaluate
from meshplan.errors import MeshplanError
from meshplan.specs.cluster import Cluster
from meshplan.specs.plan import PlanArrays
from meshplan.validate.metrics import compare, pick_metric
from meshplan.validate.rows import Case, build_case

PARAMS: dict[str, tuple[float, float]] = {
    "gemm_scale": (0.35, 1.15),
    "attention_scale": (0.3, 1.5),
    "kernel_overhead": (0.0, 4e-4),
    "pp_overlap": (0.0, 1.0),
}
"""Fitted parameters and their search bounds."""
DEFAULTS = {"gemm_scale": 1.0, "attention_scale": 1.0, "kernel_overhead": 3e-5,
            "pp_overlap": 0.0}
_CLUSTER_LEVEL = ("kernel_overhead", "pp_overlap")
Factors = dict[str, float]


@dataclass
class FitCase:
    """One run ready for fitting: its inputs and its measured step time."""

    case: Case
    measured_step: float
    group: str
    """The calibration key (accelerator silicon) whose factors the run fits."""
    source: str
    key: str
    """Runs with the same key share model, job and cluster: they are costed in one batch."""


@dataclass
class FitResult:
    factors: dict[str, Factors]
    in_sample: dict[str, float] = field(default_factory=dict)
    """id -> throughput error with the factors fitted on all runs."""
    held_out: dict[str, float] = field(default_factory=dict)
    """id -> throughput error with factors fitted without the run's source."""


def prepare(rows: Iterable[dict[str, Any]]) -> list[FitCase]:
    """Runs that can be rebuilt and compared (the same ones `meshplan validate` compares)."""
    from meshplan.api import estimate

    out = []
    for row in rows:
        metric = pick_metric(row)
        case = build_case(row) if metric else None
        if metric is None or not isinstance(case, Case):
            continue
        try:
            est = estimate(case.model, case.cluster, case.job, case.plan, case.num_gpus,
                           simulate=False)
        except MeshplanError:
            continue
        cmp = compare(case, est, metric)
        measured_step = est.step_time_s * (1 + cmp.throughput_error)
        key = "|".join(x.model_dump_json() for x in (case.model, case.job, case.cluster))
        out.append(FitCase(case, measured_step, case.cluster.accelerator.calibration_key,
                           row["source_id"], key))
    return out


def apply(cluster: Cluster, factors: Factors) -> Cluster:
    """The cluster with fitted factors in place."""
    cal = cluster.calibration.model_copy(update={k: v for k, v in factors.items()
                                                 if k not in _CLUSTER_LEVEL})
    overlap = cluster.overlap.model_copy(update={"pp": factors["pp_overlap"]})
    return cluster.model_copy(update={"calibration": cal, "overlap": overlap,
                                      "kernel_overhead": factors["kernel_overhead"]})


def predicted_steps(cases: list[FitCase], factors: Factors) -> np.ndarray:
    """Analytic step time of every case under `factors`, batched by shared inputs."""
    out = np.empty(len(cases))
    batches: dict[str, list[int]] = defaultdict(list)
    for i, fc in enumerate(cases):
        batches[fc.key].append(i)
    for idx in batches.values():
        first = cases[idx[0]].case
        P = PlanArrays.from_plans([cases[i].case.plan for i in idx])
        steps = evaluate(first.model, apply(first.cluster, factors), first.job, P).step_time
        out[idx] = steps
    return out


def _loss(cases: list[FitCase], weights: np.ndarray, factors: Factors) -> float:
    pred = predicted_steps(cases, factors)
    meas = np.array([fc.measured_step for fc in cases])
    return float(np.sum(weights * np.abs(np.log(pred / meas))) / np.sum(weights))


def _golden(f: Callable[[float], float], lo: float, hi: float, iters: int = 12) -> float:
    """Minimise a unimodal-ish f on [lo, hi] (golden-section search)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return c if fc <= fd else d


def fit_group(cases: list[FitCase], sweeps: int = 2) -> Factors:
    """Coordinate descent over PARAMS for one group of runs."""
    counts: dict[str, int] = defaultdict(int)
    for fc in cases:
        counts[fc.source] += 1
    weights = np.array([1.0 / counts[fc.source] for fc in cases])
    factors = dict(DEFAULTS)
    for _ in range(sweeps):
        for name, (lo, hi) in PARAMS.items():
            def f(x: float, name: str = name) -> float:
                return _loss(cases, weights, {**factors, name: x})
            factors[name] = _golden(f, lo, hi)
    return factors


def _errors(cases: list[FitCase], factors: Factors) -> dict[str, float]:
    pred = predicted_steps(cases, factors)
    return {fc.case.row["id"]: fc.measured_step / p - 1 for fc, p in zip(cases, pred, strict=True)}


def calibrate(rows: Iterable[dict[str, Any]], leave_one_source_out: bool = True,
              progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit every group; optionally measure leave-one-source-out errors."""
    cases = prepare(rows)
    groups: dict[str, list[FitCase]] = defaultdict(list)
    for fc in cases:
        groups[fc.group].append(fc)
    result = FitResult({})
    for name, members in sorted(groups.items()):
        if progress:
            progress(f"fitting {name} on {len(members)} runs")
        result.factors[name] = fit_group(members)
        result.in_sample.update(_errors(members, result.factors[name]))
        if not leave_one_source_out:
            continue
        sources = sorted({fc.source for fc in members})
        for source in sources:
            train = [fc for fc in members if fc.source != source]
            test = [fc for fc in members if fc.source == source]
            # A source alone on its hardware has nothing to learn from: keep the defaults.
            factors = fit_group(train) if train else dict(DEFAULTS)
            if progress:
                progress(f"  {name} without {source}: {len(train)} training runs")
            result.held_out.update(_errors(test, factors))
    return result


def calibration_toml(result: FitResult, source: str) -> str:
    """A calibration file's text for fitted factors (the format of presets/calibration.toml,
    which `--calibration FILE` reads)."""
    lines = ["# Efficiency factors fitted by `meshplan calibrate` "
             "(meshplan/validate/calibrate.py).",
             f"# Data: {source}. Do not edit by hand: rerun the command.", ""]
    for name, f in sorted(result.factors.items()):
        lines.append(f"[{name}]")
        lines.append(f"gemm_scale = {f['gemm_scale']:.4f}")
        lines.append(f"attention_scale = {f['attention_scale']:.4f}")
        lines.append(f"kernel_overhead = {f['kernel_overhead']:.3e}")
        lines.append(f"pp_overlap = {f['pp_overlap']:.4f}")
        lines.append(f'source = "meshplan calibrate --runs {source}"')
        lines.append("")
    return "\n".join(lines)
