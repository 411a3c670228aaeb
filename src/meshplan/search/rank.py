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
from meshplan.specs.plan import PlanArrays


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


MAX_SIMULATED = 100
"""Most candidates the simulator re-ranks in one search (keeps `plan` interactive at any
--top); plans ranked below them keep their closed-form estimate (`Estimate.source`)."""


@dataclass(frozen=True)
class RankedSpace:
    """A costed plan space in ranking order: fitting plans first, then by throughput."""

    plans: PlanArrays
    costs: CostArrays
    order: np.ndarray
    """Plan indexes, best first."""
    generated: int
    start: float
    """perf_counter() when the search began."""

    @property
    def num_fitting(self) -> int:
        return int(self.costs.fits.sum())


def rank_space(model: Model, cluster: Cluster, job: Job, num_gpus: int,
               opts: SpaceOptions | None = None, include_unfit: bool = False) -> RankedSpace:
    """Enumerate and cost every legal plan (vectorised) and rank them."""
    start = time.perf_counter()
    P, generated = enumerate_plans(model, job, num_gpus, opts)
    costs = evaluate(model, cluster, job, P)
    # Deterministic order: throughput, then fewer GPUs per model replica, then plan index.
    key = np.where(costs.fits | include_unfit, -costs.tokens_per_s, np.inf)
    order = np.lexsort((np.arange(len(P)), P.tp * P.pp * P.cp, key))
    return RankedSpace(P, costs, order, generated, start)


def best_plans(space: RankedSpace, cluster: Cluster, job: Job, top: int = 10,
               include_unfit: bool = False, simulate_top: int = 10,
               keep: np.ndarray | None = None) -> list[Estimate]:
    """The `top` best plans of `space` (only those `keep` marks, when given), the best
    `min(max(top, simulate_top), MAX_SIMULATED)` pipelined candidates re-ranked with the event
    simulator (simulate_top 0: closed form only)."""
    P, costs = space.plans, space.costs
    order = space.order if keep is None else space.order[keep[space.order]]
    simulated = min(max(simulate_top, top), MAX_SIMULATED) if simulate_top > 0 else 0
    # Extra candidates stand by for those the simulator finds slower or not fitting.
    pool = max(top, 3 * simulated)
    chosen = [int(i) for i in order[:pool] if include_unfit or costs.fits[i]]
    best = [estimate_from_arrays(costs, i, P.plan(i), cluster.accelerator.memory_bytes,
                                 axis_tiers(cluster, P, i)) for i in chosen]
    if simulated > 0:
        best = _simulate_and_rerank(best, chosen, costs, cluster, simulated, include_unfit)
    return [with_budget(e, job.token_budget) for e in best[:top]]


def search(model: Model, cluster: Cluster, job: Job, num_gpus: int, top: int = 10,
           opts: SpaceOptions | None = None, include_unfit: bool = False,
           simulate_top: int = 10) -> SearchResult:
    """Enumerate, cost and rank every legal plan (vectorised), then re-rank the best
    candidates with the event simulator (`best_plans`)."""
    space = rank_space(model, cluster, job, num_gpus, opts, include_unfit)
    best = best_plans(space, cluster, job, top, include_unfit, simulate_top)
    return SearchResult(best, len(space.plans), space.generated, space.num_fitting,
                        time.perf_counter() - space.start)


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
