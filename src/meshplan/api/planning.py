"""`plan`: search every legal layout, rank those that fit; optionally keep only the plans an
export target can express."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshplan.api.predict import ClusterRef, ModelRef
from meshplan.errors import MeshplanError, unknown_name
from meshplan.estimate import Estimate, calibration_info, with_calibration_info
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job

EXPORT_POOL = 5000
"""With an export target, how far down the ranking to look for plans it can express."""


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

    def ranking(self, top: int) -> list[Estimate]:
        """The first `top` plans of the full ranking, expressible or not."""
        if self.export_target is None:
            return self.plans[:top]
        merged = sorted([(r, e) for r, e in zip(self.ranks, self.plans, strict=True)]
                        + [(s.rank, s.estimate) for s in self.skipped], key=lambda x: x[0])
        return [e for _, e in merged[:top]]


def plan(model: ModelRef, cluster: ClusterRef, job: Job, num_gpus: int, top: int = 10,
         include_unfit: bool = False, simulate_top: int = 10, export_target: str | None = None,
         calibration: CalibrationRef = CALIBRATION_FILE) -> PlanResult:
    """Search every legal plan and return the `top` fastest that fit, best first.

    The best `max(top, simulate_top)` pipelined candidates are re-ranked with the event
    simulator (0: closed form only). With `export_target` (megatron, torchtitan, deepspeed),
    the plans are the best the target can express, looked for among the best `EXPORT_POOL`;
    `skipped` lists the better-ranked ones it refused, with the reason, and `config` holds
    the configuration of the best one.
    """
    from meshplan.export.api import TARGETS, export
    from meshplan.search.rank import search

    if num_gpus <= 0:
        raise MeshplanError(f"num_gpus={num_gpus}: must be a positive integer")
    if top <= 0:
        raise MeshplanError(f"top={top}: must be a positive integer")
    if simulate_top < 0:
        raise MeshplanError(f"simulate_top={simulate_top}: must be 0 or more")
    if export_target is not None and export_target not in TARGETS:
        raise unknown_name("export target", export_target, TARGETS)
    model, cluster = load_model(model), load_cluster(cluster, calibration)
    pool = top if export_target is None else max(top, EXPORT_POOL)
    found = search(model, cluster, job, num_gpus, top=pool, include_unfit=include_unfit,
                   simulate_top=simulate_top)
    info = calibration_info(cluster)  # every result names the calibration it was costed with
    found = replace(found, plans=[with_calibration_info(e, info) for e in found.plans])
    stats = {"evaluated": found.evaluated, "generated": found.generated,
             "num_fitting": found.num_fitting, "search_seconds": found.search_seconds}
    if export_target is None:
        return PlanResult(found.plans, **stats)
    plans, ranks, skipped, config = [], [], [], None
    for rank, e in enumerate(found.plans, 1):
        try:
            text = export(e, export_target, model=model, job=job, cluster=cluster)
        except MeshplanError as err:
            skipped.append(Refusal(rank, e, str(err)))
            continue
        config = config if config is not None else text
        plans.append(e)
        ranks.append(rank)
        if len(plans) == top:
            break
    return PlanResult(plans, **stats, export_target=export_target, ranks=ranks,
                      skipped=skipped, config=config)
