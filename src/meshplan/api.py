"""The Python API: `plan`, `estimate` and the loaders. The CLI is a thin layer over this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meshplan.cost.layout import axis_tier_index
from meshplan.cost.step import evaluate
from meshplan.errors import MeshplanError
from meshplan.estimate import Estimate, estimate_from_arrays, with_budget
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan, PlanArrays
from meshplan.specs.rules import check_plan

ModelRef = str | Path | Model
ClusterRef = str | Path | Cluster

AXIS_GROUPS = {"tp": ("tp",), "cp": ("cp",), "dp": ("cp", "dp"), "pp": ("pp",)}


def axis_tiers(cluster: Cluster, P: PlanArrays, i: int = 0) -> dict[str, str]:
    """Network tier each mesh axis lands on for plan i (only axes of degree > 1)."""
    out = {}
    sizes = {"tp": P.tp, "cp": P.cp, "dp": P.dp * P.cp, "pp": P.pp}
    for axis, axes in AXIS_GROUPS.items():
        if sizes[axis][i] > 1:
            out[axis] = cluster.network[int(axis_tier_index(cluster, axes, P)[i])].name
    if P.ep[i] > 1:
        idx = axis_tier_index(cluster, ("ep",), P, expert=True)
        out["ep"] = cluster.network[int(idx[i])].name
    return out


def estimate(model: ModelRef, cluster: ClusterRef, job: Job, plan: Plan,
             num_gpus: int | None = None, simulate: bool = True) -> Estimate:
    """Predict step time, throughput and memory of one plan (raises MeshplanError if illegal).

    `num_gpus`, when given, must equal the plan's dp * tp * pp * cp. With `simulate` (the
    default) the pipeline part comes from the event simulation of the plan's schedule;
    otherwise from the closed form.
    """
    model, cluster = load_model(model), load_cluster(cluster)
    P = PlanArrays.from_plans([plan])
    check_plan(model, job, num_gpus or plan.num_gpus, P)
    if cluster.num_gpus is not None and plan.num_gpus > cluster.num_gpus:
        raise MeshplanError(
            f"num_gpus={plan.num_gpus}: cluster {cluster.name} has only {cluster.num_gpus}")
    costs = evaluate(model, cluster, job, P)
    analytic = estimate_from_arrays(costs, 0, plan, cluster.accelerator.memory_bytes,
                                    axis_tiers(cluster, P))
    if simulate and plan.pp > 1:
        from meshplan.sim.plan import simulate_estimate

        analytic = simulate_estimate(analytic, costs, 0, cluster).estimate
    return with_budget(analytic, job.token_budget)




def plan(model: ModelRef, cluster: ClusterRef, job: Job, num_gpus: int, top: int = 10,
         include_unfit: bool = False) -> SearchResult:
    """Search every legal plan and return the `top` fastest that fit, best first."""
    from meshplan.search.rank import search

    if num_gpus <= 0:
        raise MeshplanError(f"num_gpus={num_gpus}: must be a positive integer")
    if top <= 0:
        raise MeshplanError(f"top={top}: must be a positive integer")
    return search(load_model(model), load_cluster(cluster), job, num_gpus, top=top,
                  include_unfit=include_unfit)


if TYPE_CHECKING:
    from meshplan.search.rank import SearchResult
