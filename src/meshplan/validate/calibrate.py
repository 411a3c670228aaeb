"""Fit a few efficiency factors per accelerator to published runs, and measure the fit honestly.

Procedure (`meshplan calibrate --runs FILE`):
1. Rebuild every run (`rows.build_case`) and convert its measurement to a measured step time
   on the source's own accounting (`metrics.compare`).
2. Group runs by the silicon of the accelerator they map to (`Accelerator.calibration_key`:
   one group, and one table of the calibration file, per die and operating point; every
   preset and cluster file declaring that silicon reads the table).
3. For each group, fit `gemm_scale`, `attention_scale` (multipliers on the measured efficiency
   curves), a GEMM factor per precision where the group has the runs for it (`gemm_scale_fp8`,
   `gemm_scale_<recipe>`: see `precision_params`; a precision group of fewer than
   `MIN_GROUP_RUNS` runs or from one source falls back recipe -> fp8 -> bf16, and its runs fit
   the factor they fall back to), `kernel_overhead` (seconds per layer and pass) and
   `pp_overlap` (share of pipeline send/receive hidden behind compute) by coordinate descent
   with a golden-section search per parameter, minimising the weighted mean |log(predicted step /
   measured step)|; each source gets equal weight inside a group, so a 178-row sweep does not
   outvote a 3-row paper. Nothing is fitted per row.
4. Leave-one-source-out: refit each group without one source and predict that source's runs
   with the refitted factors; the errors on held-out runs are the honest figure.
The fit uses the closed-form pipeline (fast); `meshplan validate` reports the simulated one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshplan.cost.train.step import evaluate
from meshplan.errors import MeshplanError
from meshplan.specs.cluster import Cluster, gemm_scale_field, precision_chain
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
GOLDEN_ITERS = 12
"""Golden-section iterations per parameter and sweep."""
SWEEPS = 2
"""Coordinate-descent sweeps over PARAMS."""
EVALUATIONS_PER_FIT = SWEEPS * len(PARAMS) * (GOLDEN_ITERS + 2)
"""Loss evaluations in one fit without per-precision factors (golden section: two points,
then one per iteration); each per-precision factor adds a parameter."""
Factors = dict[str, float]
MIN_GROUP_RUNS = 3
"""A precision group (FP8, or one FP8 recipe) gets its own GEMM factor only with at least this
many runs from at least two sources; else it falls back along `precision_chain`."""


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
    precision: str = "bf16"
    """The run's GEMM-factor group: "bf16", "fp8" or an FP8 recipe (`FP8_RECIPES`)."""


def precision_key(case: Case) -> str:
    """A run's GEMM-factor group: its FP8 recipe, "fp8" without one, else "bf16"."""
    if case.job.precision != "fp8":
        return "bf16"
    return case.cluster.calibration.fp8_recipe or "fp8"


def resolve(precision: str, fitted: Iterable[str]) -> str:
    """The factor key a run of `precision` reads: the first of its chain that is `fitted`
    (as `Calibration.gemm_scale_for` does with a calibration table)."""
    have = set(fitted)
    return next((k for k in precision_chain(precision) if gemm_scale_field(k) in have),
                "bf16")


def precision_groups(cases: Iterable[FitCase]) -> dict[str, tuple[int, int, str]]:
    """precision -> (runs, sources, the precision whose factor they fit).

    A recipe with `MIN_GROUP_RUNS` runs from two sources fits its own factor; the runs of the
    others join the generic FP8 group, which fits its own factor on the same condition, else
    everything falls back to bf16 (`precision_chain`)."""
    runs: dict[str, list[str]] = defaultdict(list)
    for fc in cases:
        runs[fc.precision].append(fc.source)

    def enough(sources: list[str]) -> bool:
        return len(sources) >= MIN_GROUP_RUNS and len(set(sources)) >= 2

    target = {k: k if k == "bf16" or (k != "fp8" and enough(v)) else "fp8"
              for k, v in runs.items()}
    pooled = [s for k, v in runs.items() if target[k] == "fp8" for s in v]
    fp8 = "fp8" if enough(pooled) else "bf16"
    return {k: (len(v), len(set(v)), fp8 if target[k] == "fp8" else target[k])
            for k, v in sorted(runs.items())}


def precision_params(cases: Iterable[FitCase]) -> list[str]:
    """The per-precision GEMM factors a set of runs fits (beyond the bf16 `gemm_scale`)."""
    targets = {t for _, _, t in precision_groups(cases).values()}
    return [gemm_scale_field(k) for k in sorted(targets - {"bf16"})]


@dataclass
class FitResult:
    factors: dict[str, Factors]
    """Calibration key (accelerator silicon) -> fitted factors."""
    runs: dict[str, dict[str, int]] = field(default_factory=dict)
    """Calibration key -> runs fitted per source."""
    precision: dict[str, dict[str, tuple[int, int, str]]] = field(default_factory=dict)
    """Calibration key -> precision group -> (runs, sources, the factor they fit)."""
    in_sample: dict[str, float] = field(default_factory=dict)
    """id -> throughput error with the factors fitted on all runs."""
    held_out: dict[str, float] = field(default_factory=dict)
    """id -> throughput error with factors fitted without the run's source."""


def prepare(rows: Iterable[dict[str, Any]]) -> list[FitCase]:
    """Runs that can be rebuilt and compared (the same ones `meshplan validate` compares).

    Rebuilt without any calibration file: the fit sets every factor itself, so what it
    produces never depends on the file it is about to replace."""
    from meshplan.api import estimate

    out = []
    for row in rows:
        metric = pick_metric(row)
        case = build_case(row, None) if metric else None
        if metric is None or not isinstance(case, Case):
            continue
        try:
            est = estimate(case.model, case.cluster, case.job, case.plan, case.num_gpus,
                           simulate=False)
        except MeshplanError:
            continue
        cmp = compare(case, est, metric)
        measured_step = est.step_time_s * (1 + cmp.throughput_error)
        out.append(FitCase(case, measured_step, case.cluster.accelerator.calibration_key,
                           row["source_id"], _batch_key(case, row["source_id"]),
                           precision_key(case)))
    return out


def _batch_key(case: Case, source: str) -> str:
    """What runs must share to be costed in one call: the model (its name and provenance
    text aside, which no formula reads), job, cluster, axis order, and the source (so that
    leaving a source out drops whole batches)."""
    return "|".join((source, case.model.model_dump_json(exclude={"name", "source"}),
                     case.job.model_dump_json(), case.cluster.model_dump_json(),
                     ",".join(case.plan.axis_order)))


def apply(cluster: Cluster, factors: Factors) -> Cluster:
    """The cluster with fitted factors in place (the per-precision GEMM factors too)."""
    cal = cluster.calibration.model_copy(update={k: v for k, v in factors.items()
                                                 if k not in _CLUSTER_LEVEL})
    overlap = cluster.overlap.model_copy(update={"pp": factors["pp_overlap"]})
    return cluster.model_copy(update={"calibration": cal, "overlap": overlap,
                                      "kernel_overhead": factors["kernel_overhead"]})


@dataclass
class _Batch:
    case: Case
    """The first run of the batch (model, job and cluster of all)."""
    plans: PlanArrays
    members: np.ndarray
    """Indices of the batch's runs in the fitter's case list."""


class Fitter:
    """The runs of one group, batched once, with every costing remembered.

    Costing is the whole price of a fit (one `evaluate` per batch and candidate factors), so
    the batches are built once and each (batch, factors) step-time array is kept: the
    leave-one-source-out refits of a group meet many of the factor points the full fit and
    the other refits already costed (every fit starts from the same defaults and brackets).
    """

    def __init__(self, cases: list[FitCase]) -> None:
        self.cases = cases
        self.measured = np.array([fc.measured_step for fc in cases])
        self.source = np.array([fc.source for fc in cases])
        index: dict[str, list[int]] = defaultdict(list)
        for i, fc in enumerate(cases):
            index[fc.key].append(i)
        self.batches = [_Batch(cases[idx[0]].case,
                               PlanArrays.from_plans([cases[i].case.plan for i in idx]),
                               np.array(idx)) for idx in index.values()]
        self.precision = [cases[b.members[0]].precision for b in self.batches]
        self._memo: dict[tuple[int, tuple[float, ...]], np.ndarray] = {}
        self.evaluations = 0
        """Loss evaluations so far (progress)."""

    def steps(self, factors: Factors, batches: Iterable[int] | None = None) -> np.ndarray:
        """Analytic step time of every run (NaN outside `batches`) under `factors`."""
        out = np.full(len(self.cases), np.nan)
        shared = tuple(factors[k] for k in PARAMS if k != "gemm_scale")
        for b in range(len(self.batches)) if batches is None else batches:
            # a batch reads one GEMM factor: the first of its precision's chain in `factors`
            gemm = factors[gemm_scale_field(resolve(self.precision[b], factors))]
            point = (gemm, *shared)
            steps = self._memo.get((b, point))
            if steps is None:
                batch = self.batches[b]
                mine = {**{k: factors[k] for k in PARAMS}, "gemm_scale": gemm}
                steps = evaluate(batch.case.model, apply(batch.case.cluster, mine),
                                 batch.case.job, batch.plans).step_time
                self._memo[(b, point)] = steps
            out[self.batches[b].members] = steps
        return out

    def precision_params(self, without: str | None = None) -> list[str]:
        """The per-precision GEMM factors a fit of this group (less one source) fits."""
        return precision_params([fc for fc in self.cases if fc.source != without])

    def fit_evaluations(self, without: str | None = None, sweeps: int = SWEEPS) -> int:
        """Loss evaluations of one fit (golden section: two points, then one per iteration,
        per parameter and sweep)."""
        return sweeps * (len(PARAMS) + len(self.precision_params(without))) * \
            (GOLDEN_ITERS + 2)

    def fit(self, without: str | None = None, sweeps: int = SWEEPS,
            tick: Callable[[], None] | None = None) -> Factors:
        """Coordinate descent over PARAMS on the group's runs (less one source)."""
        keep = self.source != without
        batches = [b for b, batch in enumerate(self.batches) if keep[batch.members[0]]]
        counts: dict[str, int] = defaultdict(int)
        for src in self.source[keep]:
            counts[src] += 1
        weights = np.array([1.0 / counts[src] for src in self.source[keep]])
        meas = self.measured[keep]

        def loss(candidate: Factors) -> float:
            pred = self.steps(candidate, batches)[keep]
            if tick:
                tick()
            return float(np.sum(weights * np.abs(np.log(pred / meas))) / np.sum(weights))

        factors = dict(DEFAULTS)
        extra = self.precision_params(without)
        factors.update({name: DEFAULTS["gemm_scale"] for name in extra})
        bounds = {**PARAMS, **{name: PARAMS["gemm_scale"] for name in extra}}
        for _ in range(sweeps):
            for name, (lo, hi) in bounds.items():
                def f(x: float, name: str = name) -> float:
                    return loss({**factors, name: x})
                factors[name] = _golden(f, lo, hi, GOLDEN_ITERS)
        return factors

    def errors(self, factors: Factors, source: str | None = None) -> dict[str, float]:
        """id -> throughput error of the runs (of one source) under `factors`."""
        pick = [b for b, batch in enumerate(self.batches)
                if source is None or self.source[batch.members[0]] == source]
        pred = self.steps(factors, pick)
        return {fc.case.row["id"]: fc.measured_step / p - 1
                for fc, p in zip(self.cases, pred, strict=True)
                if source is None or fc.source == source}


def predicted_steps(cases: list[FitCase], factors: Factors) -> np.ndarray:
    """Analytic step time of every case under `factors`, batched by shared inputs."""
    return Fitter(cases).steps(factors)


def _golden(f: Callable[[float], float], lo: float, hi: float,
            iters: int = GOLDEN_ITERS) -> float:
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


def fit_group(cases: list[FitCase], sweeps: int = SWEEPS) -> Factors:
    """Coordinate descent over PARAMS for one group of runs."""
    return Fitter(cases).fit(sweeps=sweeps)


Progress = Callable[[str, int, int], None]
"""progress(what, done, total): `done` of `total` loss evaluations, `what` the current fit."""


def calibrate(rows: Iterable[dict[str, Any]], leave_one_source_out: bool = True,
              progress: Progress | None = None) -> FitResult:
    """Fit every group; optionally measure leave-one-source-out errors."""
    cases = prepare(rows)
    groups: dict[str, list[FitCase]] = defaultdict(list)
    for fc in cases:
        groups[fc.group].append(fc)
    fits: list[tuple[str, str | None]] = []
    for name, members in sorted(groups.items()):
        fits.append((name, None))
        sources = sorted({fc.source for fc in members})
        if leave_one_source_out:
            # A source alone on its hardware has nothing to learn from: it keeps the defaults.
            fits += [(name, s) for s in sources if len(sources) > 1]
    result = FitResult({})
    fitters = {name: Fitter(members) for name, members in groups.items()}
    total, done = sum(fitters[n].fit_evaluations(without) for n, without in fits), 0
    for name, without in fits:
        fitter = fitters[name]
        what = (f"{name}: {len(fitter.cases)} runs" if without is None else
                f"{name} without {without}")

        def tick(what: str = what) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(what, done, total)

        factors = fitter.fit(without, tick=tick)
        if without is None:
            result.factors[name] = factors
            result.runs[name] = dict(sorted(Counter(fitter.source.tolist()).items()))
            result.precision[name] = precision_groups(fitter.cases)
            result.in_sample.update(fitter.errors(factors))
        else:
            result.held_out.update(fitter.errors(factors, without))
    if leave_one_source_out:
        for fitter in fitters.values():
            if len(set(fitter.source)) == 1:
                result.held_out.update(fitter.errors(dict(DEFAULTS)))
    if progress:
        progress("done", total, total)
    return result


def presets_reading(key: str) -> list[str]:
    """The cluster presets whose accelerator reads calibration table `key`."""
    from meshplan.specs.io import calibration_key, preset_data, preset_names

    return [n for n in preset_names("clusters") if calibration_key(preset_data(n)) == key]


def calibration_toml(result: FitResult, source: str) -> str:
    """A calibration file's text for fitted factors (the format of presets/calibration.toml,
    which `--calibration FILE` reads): one table per accelerator silicon. `source` is the
    runs file, or "shipped"."""
    data = ("the published runs shipped with meshplan (meshplan/data/"
            "published_training_runs.json)" if source == "shipped" else source)
    lines = ["# Efficiency factors fitted by `meshplan calibrate --runs "
             f"{source}` (meshplan/validate/calibrate.py).",
             f"# Data: {data}. Do not edit by hand: rerun the command.",
             "# One table per accelerator silicon: every cluster (preset or file) whose",
             "# [accelerator] declares that `silicon` (else has that name) reads it.", ""]
    for name, f in sorted(result.factors.items()):
        runs = result.runs.get(name, {})
        if runs:
            lines.append(f"# {sum(runs.values())} runs: " + ", ".join(
                f"{src} {n}" for src, n in runs.items()))
        readers = presets_reading(name)
        if readers:
            lines.append(f"# presets: {', '.join(readers)}")
        for key, (n, k, target) in sorted(result.precision.get(name, {}).items()):
            how = ("own factor" if target == key else
                   f"falls back to {gemm_scale_field(target)} (< {MIN_GROUP_RUNS} runs or "
                   "one source)")
            lines.append(f"# {key}: {n} runs from {k} source{'s' * (k != 1)}: {how}")
        lines.append(f"[{name}]")
        lines.append(f"gemm_scale = {f['gemm_scale']:.4f}")
        for key in sorted(k for k in f if k.startswith("gemm_scale_")):
            lines.append(f"{key} = {f[key]:.4f}")
        lines.append(f"attention_scale = {f['attention_scale']:.4f}")
        lines.append(f"kernel_overhead = {f['kernel_overhead']:.3e}")
        lines.append(f"pp_overlap = {f['pp_overlap']:.4f}")
        lines.append(f'source = "meshplan calibrate --runs {source}"')
        lines.append("")
    return "\n".join(lines)
