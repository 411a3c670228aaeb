"""ZB-H1 and ZB-H2: Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024 (arXiv:2401.10241),
Sec. 3.1 and Fig. 3, the handcrafted schedules.

Both split the backward into I (input gradient, on the critical path) and W (weight gradient,
which nobody waits for) and use W to fill bubbles. They differ only in how many microbatches a
rank may hold between its F and its W:

- ZB-H1 caps every rank at p, 1F1B's peak on rank 0, so no rank needs more memory than 1F1B
  does, and warms up like 1F1B (p-r forwards before the first I). Bubble about a third of
  1F1B's. Same order as torch's `ScheduleInterleavedZeroBubble` with one stage per rank.
- ZB-H2 allows 2p-1 and warms up with 2(p-r)-1 forwards, exactly enough for the first input
  gradient to arrive as the last warm-up forward ends: the "parallelogram" of Fig. 3 (bottom),
  with no bubble inside a rank when F, I and W take equal time.
"""

from __future__ import annotations

from collections.abc import Callable

from meshplan.schedules._common import check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import F, I, W, Action, Schedule


def capped_zero_bubble_order(stage: int, num_microbatches: int, num_warmup: int,
                             max_in_flight: int) -> list[Action]:
    """One rank's order: warm-up forwards, then per microbatch I, W when needed, F.

    After each I the rank runs the oldest owed W only if it must: when it already holds
    `max_in_flight` microbatches (F done, W not) or when no forward is left to run. Otherwise
    it runs the next F and keeps the W for a later gap. Leftover Ws close the list.
    """
    m = num_microbatches
    order = [Action(stage, F, mb) for mb in range(num_warmup)]
    next_f, next_w = num_warmup, 0
    for mb in range(m):
        order.append(Action(stage, I, mb))
        if next_f == m or next_f - next_w >= max_in_flight:
            order.append(Action(stage, W, next_w))
            next_w += 1
        if next_f < m:
            order.append(Action(stage, F, next_f))
            next_f += 1
    order.extend(Action(stage, W, mb) for mb in range(next_w, m))
    return order


def _handcrafted(name: str, num_ranks: int, num_microbatches: int, max_in_flight: int,
                 warmup: Callable[[int], int]) -> Schedule:
    """Apply `capped_zero_bubble_order` on every rank, `warmup(r)` forwards first."""
    check_sizes(name, num_ranks, num_microbatches)
    m = num_microbatches
    orders = {
        r: capped_zero_bubble_order(r, m, min(warmup(r), m), max_in_flight)
        for r in range(num_ranks)
    }
    return Schedule(orders, m, loop_stage_to_rank(num_ranks, 1), name)


def zb_h1(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB-H1: 1F1B's memory (p microbatches in flight at most), a third of its bubble."""
    p = num_ranks
    return _handcrafted("zb-h1", p, num_microbatches, p, lambda r: p - r)


def zb_h2(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB-H2: up to 2p-1 microbatches in flight, no bubble inside a rank (F = I = W)."""
    p = num_ranks
    return _handcrafted("zb-h2", p, num_microbatches, 2 * p - 1, lambda r: 2 * (p - r) - 1)
