"""Cost a whole plan space and rank it: fitting plans first, then by throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from meshplan.analytic import axis_tiers, estimate_from_arrays
from meshplan.cost.train.step import CostArrays, evaluate
from meshplan.estimate import Estimate, with_budget
from meshplan.search.space import SpaceOptions, enumerate_plans
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan, PlanArrays


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


EQUIVALENT_STEP = 0.005
"""Plans with the same degrees whose step times are within this share of each other are one
row of a ranking: what tells them apart (ZeRO stage, micro-batch, recompute) costs nothing."""
GROUP_WALK = 50_000
"""Most ranked plans read to form the groups of one search."""


def best_plans(space: RankedSpace, cluster: Cluster, job: Job, top: int = 10,
               include_unfit: bool = False, simulate_top: int = 10,
               keep: np.ndarray | None = None, variants: bool = False) -> list[Estimate]:
    """The `top` best groups of equivalent plans of `space` (only the plans `keep` marks, when
    given), each shown by its representative (`group_equivalents`): one group per set of
    parallel degrees, its fastest, unless `variants` (then slower groups of the same degrees,
    more than EQUIVALENT_STEP apart, are rows too); the best
    `min(max(top, simulate_top), MAX_SIMULATED)` pipelined representatives re-ranked with the
    event simulator (simulate_top 0: closed form only)."""
    P, costs = space.plans, space.costs
    order = space.order if keep is None else space.order[keep[space.order]]
    if not include_unfit:
        order = order[costs.fits[order]]
    simulated = min(max(simulate_top, top), MAX_SIMULATED) if simulate_top > 0 else 0
    # Extra candidates stand by for those the simulator finds slower or not fitting.
    chosen, counts = _group_heads(space, order, max(top, 3 * simulated), variants)
    best = [replace(estimate_from_arrays(costs, i, P.plan(i), cluster.accelerator.memory_bytes,
                                         axis_tiers(cluster, P, i)), equivalent_plans=n)
            for i, n in zip(chosen, counts, strict=True)]
    if simulated > 0:
        best = _simulate_and_rerank(best, chosen, costs, cluster, simulated, include_unfit)
    return [with_budget(e, job.token_budget) for e in group_equivalents(best)[:top]]


def _degrees(plan: Plan) -> tuple[int, ...]:
    return (plan.tp, plan.cp, plan.pp, plan.dp, plan.ep)


@dataclass
class _Group:
    """A group being formed: its fastest step, its representative and its size."""

    fastest: float
    peak: float
    zero: int
    index: int
    count: int = 1

    def offer(self, peak: float, zero: int, index: int) -> None:
        """Count a member; it represents the group if it has more headroom (then a lower
        ZeRO stage)."""
        self.count += 1
        if (peak, zero) < (self.peak, self.zero):
            self.peak, self.zero, self.index = peak, zero, index


def _group_heads(space: RankedSpace, order: np.ndarray, groups: int, variants: bool = False
                 ) -> tuple[list[int], list[int]]:
    """Representatives of the first `groups` groups of equivalent plans along `order`, and
    how many plans each stands for (a group: same degrees, step within EQUIVALENT_STEP of its
    fastest; its representative: the most memory headroom, then the lowest ZeRO stage).
    Without `variants`, a slower group of degrees already seen is no row: the ranking is one
    of layouts, each at its best micro-batch, recompute and ZeRO stage."""
    P, costs = space.plans, space.costs
    walk = order[:GROUP_WALK]
    keys = np.stack([P.tp[walk], P.cp[walk], P.pp[walk], P.dp[walk], P.ep[walk]], axis=1)
    step, peak, zero = costs.step_time[walk], costs.memory["peak"][walk], P.zero[walk]
    heads: list[_Group] = []
    latest: dict[tuple[int, ...], int] = {}
    for j in range(len(walk)):
        if len(heads) >= groups and step[j] > (1 + EQUIVALENT_STEP) * heads[-1].fastest:
            break
        key = tuple(keys[j].tolist())
        g = latest.get(key)
        if g is None or step[j] > (1 + EQUIVALENT_STEP) * heads[g].fastest:
            if len(heads) >= groups or (g is not None and not variants):
                continue
            latest[key] = len(heads)
            heads.append(_Group(float(step[j]), float(peak[j]), int(zero[j]), int(walk[j])))
            continue
        heads[g].offer(float(peak[j]), int(zero[j]), int(walk[j]))
    return [h.index for h in heads], [h.count for h in heads]


def group_equivalents(ranked: list[Estimate]) -> list[Estimate]:
    """Merge ranked estimates with the same degrees whose step times are within
    EQUIVALENT_STEP of the group's fastest into one, the representative being the one with the
    most memory headroom, then the lowest ZeRO stage; counts add up."""
    groups: list[list[Estimate]] = []
    latest: dict[tuple[int, ...], int] = {}
    for e in ranked:
        key = _degrees(e.plan)
        g = latest.get(key)
        if g is not None and e.step_time_s <= (1 + EQUIVALENT_STEP) * groups[g][0].step_time_s:
            groups[g].append(e)
            continue
        latest[key] = len(groups)
        groups.append([e])
    out = []
    for members in groups:
        rep = min(members, key=lambda e: (e.memory_bytes["peak"], e.plan.zero_stage))
        out.append(replace(rep, equivalent_plans=sum(e.equivalent_plans for e in members)))
    return out


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
