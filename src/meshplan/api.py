"""The Python API: `plan`, `estimate` and the loaders. The CLI is a thin layer over this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meshplan.errors import MeshplanError
from meshplan.analytic import analytic_estimate
from meshplan.estimate import Estimate, with_budget
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan

ModelRef = str | Path | Model
ClusterRef = str | Path | Cluster

def estimate(model: ModelRef, cluster: ClusterRef, job: Job, plan: Plan,
             num_gpus: int | None = None, simulate: bool = True) -> Estimate:
    """Predict step time, throughput and memory of one plan (raises MeshplanError if illegal).

    `num_gpus`, when given, must equal the plan's dp * tp * pp * cp. With `simulate` (the
    default) the pipeline part comes from the event simulation of the plan's schedule;
    otherwise from the closed form.
    """
    cluster = load_cluster(cluster)
    analytic, costs = analytic_estimate(load_model(model), cluster, job, plan, num_gpus)
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
