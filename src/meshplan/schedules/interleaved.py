"""Interleaved 1F1B: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
GPU Clusters Using Megatron-LM" (SC21), Sec. 2.2.2 "Schedule with Interleaved Stages".

Each rank holds v model chunks (stage s on rank s % p), which cuts the bubble by v at the cost
of v times more point-to-point messages. Warm-up follows Megatron-LM's
`forward_backward_pipelining_with_interleaving`: (v-1)*p + 2*(p-1-r) virtual microbatches,
capped at v*m; the order then equals torch's `ScheduleInterleaved1F1B` when m % p == 0.
"""

from __future__ import annotations

import numpy as np

from meshplan.errors import invalid
from meshplan.schedules._common import check_chunks, check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import Schedule
from meshplan.schedules.one_f_one_b import depth_first_order
from meshplan.schedules.spec import ScheduleSpec, looped_time


def interleaved_1f1b(num_ranks: int, num_microbatches: int, *, num_chunks: int = 2) -> Schedule:
    """Depth-first interleaving of `num_chunks` chunks per rank; needs m a multiple of p.

    Megatron-LM asserts m % p == 0 for interleaving (microbatches move through the chunks in
    groups of p); torch relaxes it, we keep Megatron's rule so both engines can run the plan.
    """
    p, m, v = num_ranks, num_microbatches, num_chunks
    check_sizes("interleaved-1f1b", p, m, min_microbatches=p, why="m >= num_ranks")
    check_chunks("interleaved-1f1b", v, 2)
    if m % p:
        raise invalid(
            "num_microbatches",
            m,
            f"interleaved-1f1b needs a multiple of num_ranks={p} (Megatron-LM rule)",
        )
    orders = {
        r: depth_first_order(r, p, v, m, min((v - 1) * p + 2 * (p - 1 - r), v * m))
        for r in range(p)
    }
    return Schedule(orders, m, loop_stage_to_rank(p, v), "interleaved-1f1b")


def interleaved_in_flight(p: np.ndarray, m: np.ndarray, v: np.ndarray,
                          rank: np.ndarray) -> np.ndarray:
    """Rank r runs 2(p - r - 1) + (v - 1) p warm-up chunk forwards (Megatron-LM's
    forward_backward_pipelining_with_interleaving) and holds one more chunk: p + (p - 1)/v
    micro-batches on the first rank (Korthikanti et al. 2022 Sec. 4.2.3: factor
    1 + (p-1)/(p v) over 1F1B's p), 1 less every rank after it by 2/v."""
    chunks = 2 * (p - rank - 1) + (v - 1) * p + 1
    return np.minimum(chunks / v, m)


SPEC = ScheduleSpec(
    name="interleaved-1f1b", generator=interleaved_1f1b, pipeline_time=looped_time,
    in_flight=interleaved_in_flight, min_chunks=2, max_chunks=None, default_chunks=2,
    min_microbatches_per_rank=1, microbatches_multiple_of_ranks=True,
    megatron="forward_backward_pipelining_with_interleaving", torchtitan="Interleaved1F1B",
)
