"""Cost a whole plan space and rank it: fitting plans first, then by throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from meshplan.analytic import axis_tiers, estimate_from_arrays
from meshplan.cost.train.step import CostArrays, evaluate
from meshplan.estimate import Estimate, with_budget
from meshplan.search.space import SpaceOptions, enumerate_plans
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model


@dataclass(frozen=True)
class SearchResult:
    """The best plans, best first, and what the search did."""

    plans: list[Estimate]
    evaluated: int
    """Plans costed (legal candidates)."""
    generated: int
    """Candidates enumerated before the legality rules."""
    num_fitting: int
    search_seconds: float


def search(model: Model, cluster: Cluster, job: Job, num_gpus: int, top: int = 10,
           opts: SpaceOptions | None = None, include_unfit: bool = False,
           simulate_top: int = 10) -> SearchResult:
    """Enumerate, cost and rank every legal plan (vectorised), then re-rank the best
    `max(top, simulate_top)` pipelined candidates with the event simulator (0: closed form
    only)."""
    start = time.perf_counter()
    P, generated = enumerate_plans(model, job, num_gpus, opts)
    if len(P) == 0:
        return SearchResult([], 0, generated, 0, time.perf_counter() - start)
    costs = evaluate(model, cluster, job, P)
    # Deterministic order: throughput, then fewer GPUs per model replica, then plan index.
    key = np.where(costs.fits | include_unfit, -costs.tokens_per_s, np.inf)
    order = np.lexsort((np.arange(len(P)), P.tp * P.pp * P.cp, key))
    fitting = int(costs.fits.sum())
    # Extra candidates stand by for those the simulator finds slower or not fitting.
    pool = 3 * max(top, simulate_top)
    chosen = [int(i) for i in order[:pool] if include_unfit or costs.fits[i]]
    best = [estimate_from_arrays(costs, i, P.plan(i), cluster.accelerator.memory_bytes,
                                 axis_tiers(cluster, P, i)) for i in chosen]
    if simulate_top > 0:
        best = _simulate_and_rerank(best, chosen, costs, cluster, max(simulate_top, top),
                                    include_unfit)
    best = [with_budget(e, job.token_budget) for e in best[:top]]
    return SearchResult(best, len(P), generated, fitting, time.perf_counter() - start)


def _simulate_and_rerank(best: list[Estimate], index: list[int], costs: CostArrays,
                         cluster: Cluster, k: int, include_unfit: bool) -> list[Estimate]:
    """Simulate candidates in ranked order until the best k are all simulated (a plan that
    does not fit once simulated drops out and the next candidate moves up)."""
    from meshplan.sim.plan import simulate_estimate

    refined = list(best)
    done = [e.plan.pp == 1 for e in best]  # single-stage plans have nothing to simulate
    budget = 2 * k  # simulations at most: keeps `plan` interactive
    while True:
        # Once the budget is spent, simulated plans rank ahead of unrefined ones.
        order = sorted(range(len(refined)),
                       key=lambda j: (budget <= 0 and not done[j], -refined[j].tokens_per_s))
        order = [j for j in order if include_unfit or refined[j].fits]
        todo = [j for j in order[:k] if not done[j]]
        if not todo or budget <= 0:
            return [refined[j] for j in order]
        budget -= len(todo)
        for j in todo:
            refined[j] = simulate_estimate(refined[j], costs, index[j], cluster).estimate
            done[j] = True
