"""`plan`: search every legal layout, rank those that fit; optionally keep only the plans an
export target can express."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from meshplan.api.predict import ClusterRef, ModelRef
from meshplan.cost.params import count_params
from meshplan.cost.train.memory import WEIGHT_BYTES
from meshplan.errors import MeshplanError, unknown_name
from meshplan.estimate import Estimate, calibration_info, with_calibration_info
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.rules import check_inputs

MAX_TOP = 1000
"""Most plans one search returns."""


@dataclass(frozen=True)
class Refusal:
    """A ranked plan the export target cannot express, and why."""

    rank: int
    """1-based position in the full ranking."""
    estimate: Estimate
    reason: str


@dataclass(frozen=True)
class PlanResult:
    """The best plans, best first, and what the search did."""

    plans: list[Estimate]
    evaluated: int
    """Plans costed (legal candidates)."""
    generated: int
    """Candidates enumerated before the legality rules."""
    num_fitting: int
    search_seconds: float
    export_target: str | None = None
    ranks: list[int] = field(default_factory=list)
    """With an export target: each plan's 1-based position in the full ranking."""
    skipped: list[Refusal] = field(default_factory=list)
    """With an export target: the better-ranked plans it cannot express."""
    config: str | None = None
    """With an export target: the configuration of the best plan it can express."""
    full: list[Estimate] = field(default_factory=list)
    """With an export target: the best plans of the whole space, expressible or not."""
    space: dict[str, Any] = field(default_factory=dict)
    """The costed space as chart points (`meshplan.search.frontier.space_points`): every
    plan of the Pareto frontier of throughput per GPU against memory, and a sample."""

    def ranking(self, top: int) -> list[Estimate]:
        """The first `top` plans of the full ranking, expressible or not."""
        return (self.plans if self.export_target is None else self.full)[:top]


def plan(model: ModelRef, cluster: ClusterRef, job: Job, num_gpus: int, top: int = 10,
         include_unfit: bool = False, simulate_top: int = 10, export_target: str | None = None,
         calibration: CalibrationRef = CALIBRATION_FILE, variants: bool = False) -> PlanResult:
    """Search every legal plan and return the `top` fastest that fit, best first: one per set
    of parallel degrees (tp, cp, pp, dp, ep) at its best micro-batch, recompute and ZeRO
    stage, or with `variants` also the slower settings of the same degrees.

    The best `max(top, simulate_top)` pipelined candidates (at most `MAX_SIMULATED`) are
    re-ranked with the event simulator (0: closed form only). With `export_target`
    (megatron, torchtitan, deepspeed) the space is first filtered to the plans the target can
    express (its refusals, vectorised), so the plans are the best it can express; `skipped`
    lists the better-ranked ones of the full ranking it refused, with the reason, and
    `config` holds the configuration of the best one.
    """
    from meshplan.export.api import TARGETS, export, expressible_mask, refusal
    from meshplan.search.frontier import space_points
    from meshplan.search.rank import best_plans, rank_space

    if num_gpus <= 0:
        raise MeshplanError(f"num_gpus={num_gpus}: must be a positive integer")
    if not 0 < top <= MAX_TOP:
        raise MeshplanError(f"top={top}: must be between 1 and {MAX_TOP} (the ranking below "
                            "is noise at that depth; narrow the space instead)")
    if simulate_top < 0:
        raise MeshplanError(f"simulate_top={simulate_top}: must be 0 or more")
    if export_target is not None and export_target not in TARGETS:
        raise unknown_name("export target", export_target, TARGETS)
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    check_inputs(model, cluster, job, num_gpus)
    check_weights_fit(model, cluster, num_gpus)
    space = rank_space(model, cluster, job, num_gpus, include_unfit=include_unfit)
    info = calibration_info(cluster)  # every result names the calibration it was costed with
    full = [with_calibration_info(e, info)
            for e in best_plans(space, cluster, job, top, include_unfit, simulate_top,
                                variants=variants)]
    seconds = time.perf_counter() - space.start
    points = space_points(space, num_gpus)
    if export_target is None:
        return PlanResult(full, len(space.plans), space.generated, space.num_fitting, seconds,
                          space=points)
    keep = expressible_mask(export_target, model, job, space.plans)
    plans = [with_calibration_info(e, info) for e in
             best_plans(space, cluster, job, top, include_unfit, simulate_top, keep=keep,
                        variants=variants)]
    ranks = _ranks(plans, full)
    last = ranks[-1] if ranks else len(full) + 1
    skipped = [Refusal(rank, e, str(why)) for rank, e in enumerate(full, 1)
               if rank < last and (why := refusal(export_target, model, job, e.plan))]
    config = export(plans[0], export_target, model=model, job=job, cluster=cluster) \
        if plans else None
    return PlanResult(plans, len(space.plans), space.generated, space.num_fitting,
                      time.perf_counter() - space.start, export_target=export_target,
                      ranks=ranks, skipped=skipped, config=config, full=full, space=points)


def _ranks(plans: list[Estimate], full: list[Estimate]) -> list[int]:
    """1-based position of each plan in the full ranking; plans below its shown part follow
    it in their own order."""
    position = {e.plan.model_dump_json(): r for r, e in enumerate(full, 1)}
    beyond = iter(range(len(full) + 1, len(full) + 1 + len(plans)))
    return sorted(position.get(e.plan.model_dump_json()) or next(beyond) for e in plans)


def check_weights_fit(model: Model, cluster: Cluster, num_gpus: int) -> None:
    """Refuse a search no plan can pass: the bf16 weights alone, spread over every GPU (the
    most any sharding achieves), must fit in one GPU's memory."""
    per_gpu = WEIGHT_BYTES * count_params(model).total / num_gpus
    capacity = cluster.accelerator.memory_bytes
    if per_gpu > capacity:
        raise MeshplanError(
            f"num_gpus={num_gpus}: no plan can fit {model.name}: its weights alone need "
            f"{per_gpu / 2**30:,.1f} GiB per GPU even fully sharded over {num_gpus} GPUs, "
            f"and a {cluster.accelerator.name} has {capacity / 2**30:,.1f} GiB")
