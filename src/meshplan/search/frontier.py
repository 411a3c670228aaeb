"""The plan space as points for a chart: throughput per GPU against peak memory per GPU, every
costed plan's, fitting or not, with the Pareto frontier of the fitting plans marked.

A search costs up to millions of plans; a page cannot draw them all. The points kept are the
whole frontier, the best of the ranking, and an even sample of the rest of it (every k-th
plan in ranking order, so the cloud keeps the shape of the space), at most `MAX_POINTS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshplan.pareto import pareto_mask
from meshplan.search.rank import RankedSpace

MAX_POINTS = 1500
BEST_KEPT = 100
"""Plans at the head of the ranking always kept (the ones a reader hovers over)."""
__all__ = ["COLUMNS", "MAX_POINTS", "pareto_mask", "space_points"]
COLUMNS = ("tp", "cp", "pp", "dp", "ep", "micro_batch_size", "schedule", "vpp", "zero_stage",
           "recompute", "tokens_per_s_per_gpu", "memory_gib", "fits", "pareto")


def space_points(space: RankedSpace, num_gpus: int, limit: int = MAX_POINTS) -> dict[str, Any]:
    """`{"evaluated", "columns", "rows"}`: the kept plans, one row of `COLUMNS` each."""
    P, costs = space.plans, space.costs
    per_gpu = costs.tokens_per_s / num_gpus
    memory = costs.memory["peak"] / 2**30
    # The frontier a user can pick from: of the plans that fit (an unfit plan is no option,
    # however fast; it is drawn, marked, beside them).
    fits = np.asarray(costs.fits, dtype=bool)
    frontier = np.zeros(len(P), dtype=bool)
    frontier[np.flatnonzero(fits)[pareto_mask(per_gpu[fits], memory[fits])]] = True
    ranked = np.asarray(space.order)
    chosen = np.zeros(len(P), dtype=bool)
    chosen[np.flatnonzero(frontier)[:limit]] = True
    chosen[ranked[:BEST_KEPT]] = True
    room = limit - int(chosen.sum())
    if room > 0:
        rest = ranked[~chosen[ranked]]
        chosen[rest[np.linspace(0, len(rest) - 1, min(room, len(rest))).astype(int)]] = True
    rows = []
    for i in ranked[chosen[ranked]]:
        p = P.plan(int(i))
        rows.append([p.tp, p.cp, p.pp, p.dp, p.ep, p.micro_batch_size, p.schedule, p.vpp,
                     p.zero_stage, p.recompute, float(per_gpu[i]), float(memory[i]),
                     bool(costs.fits[i]), bool(frontier[i])])
    return {"evaluated": len(P), "columns": list(COLUMNS), "rows": rows}
