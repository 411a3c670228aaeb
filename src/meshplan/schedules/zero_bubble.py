"""ZB-H1 and ZB-H2: Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024 (arXiv:2401.10241),
Sec. 3.1 and Fig. 3, the handcrafted schedules.

Both split the backward into I (input gradient, on the critical path) and W (weight gradient,
which nobody waits for), and let W lag behind I to fill what would be bubbles. Rank r warms
up with `warmup` forwards, then for each microbatch b runs I(b), W(b - lag), F(next):

- ZB-H1: warm-up p - r, lag r. Every rank then holds at most p microbatches between F and W,
  1F1B's peak, and the bubble is about a third of 1F1B's. This is exactly torch's
  `ScheduleInterleavedZeroBubble` with one stage per rank.
- ZB-H2: warm-up 2(p - r) - 1, lag 2r: just enough forwards for the first input gradient to
  arrive as the last warm-up forward ends. Up to 2p - 1 microbatches in flight, and no idle
  step inside a rank when F, I and W take equal time: the "parallelogram" of Fig. 3 (bottom).
"""

from __future__ import annotations

import numpy as np

from meshplan.schedules._common import check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import Action, F, I, Schedule, W
from meshplan.schedules.spec import (
    W_ACTIVATION_SHARE,
    PipelineTerms,
    ScheduleSpec,
    warm_up_bubble,
)


def lagged_zero_bubble_order(
    stage: int, num_microbatches: int, num_warmup: int, lag: int
) -> list[Action]:
    """One rank's order: warm-up forwards, then I(b), W(b - lag), F(next) per microbatch b.

    Ws still owed when the input gradients are done close the list, oldest first.
    """
    m = num_microbatches
    order = [Action(stage, F, mb) for mb in range(num_warmup)]
    next_f = num_warmup
    for mb in range(m):
        order.append(Action(stage, I, mb))
        if mb >= lag:
            order.append(Action(stage, W, mb - lag))
        if next_f < m:
            order.append(Action(stage, F, next_f))
            next_f += 1
    order.extend(Action(stage, W, mb) for mb in range(max(m - lag, 0), m))
    return order


def zb_h1(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB-H1: 1F1B's memory (p microbatches in flight at most), a third of its bubble."""
    check_sizes("zb-h1", num_ranks, num_microbatches)
    p, m = num_ranks, num_microbatches
    orders = {r: lagged_zero_bubble_order(r, m, min(p - r, m), r) for r in range(p)}
    return Schedule(orders, m, loop_stage_to_rank(p, 1), "zb-h1")


def zb_h2(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB-H2: up to 2p-1 microbatches in flight, no bubble inside a rank (F = I = W)."""
    check_sizes("zb-h2", num_ranks, num_microbatches)
    p, m = num_ranks, num_microbatches
    orders = {r: lagged_zero_bubble_order(r, m, min(2 * (p - r) - 1, m), 2 * r) for r in range(p)}
    return Schedule(orders, m, loop_stage_to_rank(p, 1), "zb-h2")


def zb_h1_time(t: PipelineTerms) -> np.ndarray:
    """Bubble (p - 1)(F + I - W) (Qi et al. 2024 Sec. 3), but never below (p - 1) I: when W
    outlasts F the last rank's deferred weight passes cannot fill the wait for the first
    input gradient, which then sets the pace (exact against the generator's schedule on equal
    stages). Zero Bubble overlaps iterations (optimizer post-validation, Sec. 4), so the
    (p - 1) F warm-up of the last rank is not in it."""
    f, i, w = t.fwd, t.bwd_i, t.bwd_w
    return t.steady + (t.p - 1) * np.maximum(f + i - w, i)


def zb_h2_time(t: PipelineTerms) -> np.ndarray:
    """Bubble (p - 1)(F + I - 2W) once m >= 2p - 1 (Qi et al. 2024 Sec. 3), never below
    (p - 1)(I - F); with fewer micro-batches the extra warm-up forwards are missing and the
    bubble rises towards ZB-H1's at m = p (`warm_up_bubble`; within 5 % of the generator's
    step on equal stages over F, I, W in 0.8-2.2, tested)."""
    f, i, w = t.fwd, t.bwd_i, t.bwd_w
    full = (t.p - 1) * np.maximum(np.maximum(f + i - 2 * w, i - f), 0.0)
    at_p = (t.p - 1) * np.maximum(np.maximum(f + i - w, i), f)
    return t.steady + warm_up_bubble(t, at_p, full)


def zb_h1_in_flight(p: np.ndarray, m: np.ndarray, v: np.ndarray,
                    rank: np.ndarray) -> np.ndarray:
    """1F1B's p - r micro-batches, plus the r whose W rank r defers (Qi et al. 2024 Fig. 3),
    each holding only the W share of its activations: peak p on the first rank, as 1F1B."""
    return np.minimum(p - rank + W_ACTIVATION_SHARE * rank, m).astype(float)


def zb_h2_in_flight(p: np.ndarray, m: np.ndarray, v: np.ndarray,
                    rank: np.ndarray) -> np.ndarray:
    """2p - 1 micro-batches on every rank (Qi et al. 2024 Table 1: about 2 p M_B)."""
    return np.broadcast_to(np.minimum(2 * p - 1, m), np.broadcast(p, rank).shape).astype(float)


ZB_H1 = ScheduleSpec(
    name="zb-h1", generator=zb_h1, pipeline_time=zb_h1_time, in_flight=zb_h1_in_flight,
    min_microbatches_per_rank=1, staggered=True,
)
"""torch's InterleavedZeroBubble with one stage per rank, which torchtitan refuses
(multi-stage schedules need >= 2 stages per rank)."""
ZB_H2 = ScheduleSpec(
    name="zb-h2", generator=zb_h2, pipeline_time=zb_h2_time, in_flight=zb_h2_in_flight,
    min_microbatches_per_rank=1, staggered=True,
)
"""torch has no ZB-H2."""
