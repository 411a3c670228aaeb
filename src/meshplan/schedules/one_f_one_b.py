"""1F1B (PipeDream-Flush): Narayanan et al. 2021, "Memory-Efficient Pipeline-Parallel DNN
Training" (PipeDream-2BW paper, ICML 2021, Sec. 3.2 "PipeDream-Flush"), as used by Megatron-LM.

Same bubble as GPipe, but a rank starts a backward as soon as one is ready, so it never holds
more than p - r microbatches of activations. `depth_first_order` is the warm-up / steady /
cool-down loop that the interleaved schedule reuses with more than one chunk per rank.
"""

from __future__ import annotations

import functools

from meshplan.schedules._common import check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import Action, B, F, Schedule, make_actions
from meshplan.schedules.spec import ScheduleSpec, fill_drain_time, ranks_in_flight


def depth_first_order(
    rank: int, num_ranks: int, num_chunks: int, num_microbatches: int, num_warmup: int
) -> list[Action]:
    """One rank's actions: `num_warmup` forwards, then forward/backward pairs, then backwards.

    Works over "virtual microbatches" k = 0 .. v*m-1 as Megatron-LM's interleaved schedule
    does (`get_model_chunk_id`): forward k runs chunk (k // p) % v on microbatch
    (k // (p*v)) * p + k % p; backward k walks the chunks in reverse. With one chunk this is
    plain 1F1B (k is the microbatch). Needs m % p == 0 when v > 1.
    """
    fwd_base, bwd_base, mbs = _virtual_layout(num_ranks, num_chunks, num_microbatches)
    fwd = make_actions([s + rank for s in fwd_base], F, mbs)
    bwd = make_actions([s + rank for s in bwd_base], B, mbs)
    total, w = len(mbs), num_warmup
    steady = fwd[w:] + bwd[: total - w]  # right length; now interleave F and B
    steady[::2], steady[1::2] = fwd[w:], bwd[: total - w]
    return fwd[:w] + steady + bwd[total - w :]


@functools.lru_cache(maxsize=16)
def _virtual_layout(p: int, v: int, m: int) -> tuple[tuple[int, ...], ...]:
    """Rank-0 stage of each forward and backward virtual microbatch, and its microbatch; the
    same for every rank up to a stage offset, so it is computed once per (p, v, m)."""
    ks = range(v * m)
    fwd = tuple((k // p % v) * p for k in ks)
    bwd = tuple((v - 1 - k // p % v) * p for k in ks)
    return fwd, bwd, tuple(k // (p * v) * p + k % p for k in ks)


def one_f_one_b(num_ranks: int, num_microbatches: int) -> Schedule:
    """1F1B: rank r warms up with min(p-1-r, m) forwards, then alternates F and B."""
    check_sizes("1f1b", num_ranks, num_microbatches)
    p, m = num_ranks, num_microbatches
    orders = {r: depth_first_order(r, p, 1, m, min(p - 1 - r, m)) for r in range(p)}
    return Schedule(orders, m, loop_stage_to_rank(p, 1), "1f1b")


SPEC = ScheduleSpec(
    name="1f1b", generator=one_f_one_b, pipeline_time=fill_drain_time,
    in_flight=ranks_in_flight, megatron="forward_backward_pipelining_without_interleaving",
    torchtitan="1F1B", deepspeed="TrainSchedule",
)
