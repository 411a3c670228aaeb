"""ZB-V: Qi, Wan, Huang, Lin, "Pipeline Parallelism with Controllable Memory" (NeurIPS 2024,
arXiv:2405.15362), the V-shape zero-bubble schedule (also Sec. 6 of arXiv:2401.10241 v2).

Rank r holds chunk 0 = stage r and chunk 1 = stage 2p-1-r, so a microbatch goes down the
ranks and comes back up (a "V") and the first and last stage share rank 0. With F = I = W
this reaches zero bubble at 1F1B's activation memory (2p half-size chunks, i.e. p stages'
worth) once m >= 2p-1. The phase counts are those of torch's `ScheduleZBVZeroBubble` (from
the authors' handcrafted schedule), so the orders match it exactly.
"""

from __future__ import annotations

import numpy as np

from meshplan.schedules._common import Emitter, check_sizes, v_stage_to_rank
from meshplan.schedules.ir import Action, F, I, Schedule, W
from meshplan.schedules.spec import (
    PipelineTerms,
    ScheduleSpec,
    ranks_in_flight,
    same_in_flight,
    warm_up_bubble,
)


def _rank_order(rank: int, num_ranks: int, num_microbatches: int) -> list[Action]:
    """One rank's ZB-V order, planned for at least 2p-1 microbatches then trimmed to m."""
    p, r = num_ranks, rank
    planned = max(2 * p - 1, num_microbatches)
    c0, c1 = r, 2 * p - 1 - r
    e = Emitter()
    e.repeat(2 * (p - r) - 1, (c0, F))  # fill the way down
    e.repeat(r, (c1, F), (c0, F))  # first microbatches turn at the bottom of the V
    e.repeat(p - r, (c1, F), (c1, I), (c1, W))  # chunk 1 reaches its steady state
    steady = ((c0, I), (c0, W), (c1, F), (c1, I), (c1, W))
    e.repeat(planned - 2 * p + r + 1, (c0, F), *steady)  # steady: both chunks F, I, W
    e.repeat(p - r - 1, *steady)  # chunk 0 has no forward left
    e.repeat(r, (c0, I), (c1, I))  # cool-down: input gradients first,
    e.repeat(p - r, (c0, I), (c0, W))
    e.repeat(r, (c1, W))  # then the weight gradients they left owing
    e.repeat(r, (c0, W))
    return e.actions(num_microbatches)


def zb_v(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB-V over p ranks and 2p stages; any m >= 1 (below 2p-1 it keeps the m it has)."""
    check_sizes("zb-v", num_ranks, num_microbatches)
    p, m = num_ranks, num_microbatches
    orders = {r: _rank_order(r, p, m) for r in range(p)}
    return Schedule(orders, m, v_stage_to_rank(p), "zb-v")


def zb_v_time(t: PipelineTerms) -> np.ndarray:
    """The V-shape halves the 1F1B warm-up: bubble (p - 1)(F_c + I_c - 2 W_c) per chunk (Qi et
    al. 2024, "Pipeline Parallelism with Controllable Memory") once m >= 2p - 1, taken with
    max(F_c, I_c) for F_c (an input gradient slower than its forward stretches the V's turn),
    floored at 0; with fewer micro-batches the bubble rises to (p - 1)(max(F_c, I_c) + I_c) at
    m = p (`warm_up_bubble`). Within 5 % of the generator's step on equal stages over F, I, W
    in 0.8-2.2 (exact when I_c >= F_c; tested)."""
    f_c, i_c, w_c = t.fwd / t.v, t.bwd_i / t.v, t.bwd_w / t.v
    turn = np.maximum(f_c, i_c) + i_c
    full = (t.p - 1) * np.maximum(turn - 2 * w_c, 0.0)
    return t.steady + warm_up_bubble(t, (t.p - 1) * turn, full)


SPEC = ScheduleSpec(
    name="zb-v", generator=zb_v, pipeline_time=zb_v_time, in_flight=same_in_flight(ranks_in_flight),
    min_chunks=2, max_chunks=2, default_chunks=2, placement="v", min_microbatches_per_rank=1,
    staggered=True, torchtitan="ZBVZeroBubble",
)
