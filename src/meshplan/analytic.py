"""Cost training plans with the analytic model and pick results out as `Estimate`s.

The one place that checks a single plan and costs it (shared by `estimate`, `simulate`,
`validate` and `run`), and that turns entry i of a vectorised cost result into an Estimate.
"""

from __future__ import annotations

import numpy as np

from meshplan.cost.train.step import MEMORY_TERMS, TIME_TERMS, CostArrays, evaluate
from meshplan.errors import MeshplanError
from meshplan.estimate import Estimate
from meshplan.mesh import Mesh
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan, PlanArrays
from meshplan.specs.rules import check_plan


def estimate_from_arrays(costs: CostArrays, i: int, plan: Plan, capacity: float,
                         axis_tiers: dict[str, str]) -> Estimate:
    """Pick entry i of a vectorised cost result as an Estimate."""
    return Estimate(
        plan=plan,
        num_gpus=plan.num_gpus,
        step_time_s=float(costs.step_time[i]),
        tokens_per_s=float(costs.tokens_per_s[i]),
        mfu=float(costs.mfu[i]),
        hfu=float(costs.hfu[i]),
        num_microbatches=int(costs.num_microbatches[i]),
        time_breakdown_s={k: float(costs.time[k][i]) for k in TIME_TERMS},
        memory_bytes={k: float(costs.memory[k][i]) for k in (*MEMORY_TERMS, "peak")},
        memory_capacity_bytes=capacity,
        fits=bool(costs.fits[i]),
        axis_tiers=axis_tiers,
        model_flops_per_step=costs.model_flops,
        hardware_flops_per_step=float(costs.hardware_flops[i]),
        peak_memory_rank=int(costs.memory["peak_rank"][i]),
    )


def axis_tiers(cluster: Cluster, P: PlanArrays, i: int = 0) -> dict[str, str]:
    """Network tier each mesh axis lands on for plan i (only axes of degree > 1)."""
    return Mesh(P.select(np.array([i]))).tiers(cluster, 0)


def analytic_estimate(model: Model, cluster: Cluster, job: Job, plan: Plan,
                      num_gpus: int | None = None) -> tuple[Estimate, CostArrays]:
    """Check one plan and cost it with the closed-form pipeline; also return the raw arrays
    (the simulator refines the estimate from them)."""
    P = PlanArrays.from_plans([plan])
    check_plan(model, job, num_gpus or plan.num_gpus, P)
    if cluster.num_gpus is not None and plan.num_gpus > cluster.num_gpus:
        raise MeshplanError(
            f"num_gpus={plan.num_gpus}: cluster {cluster.name} has only {cluster.num_gpus}")
    costs = evaluate(model, cluster, job, P)
    est = estimate_from_arrays(costs, 0, plan, cluster.accelerator.memory_bytes,
                               axis_tiers(cluster, P))
    return est, costs
