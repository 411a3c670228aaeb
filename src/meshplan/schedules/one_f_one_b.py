"""1F1B (PipeDream-Flush): Narayanan et al. 2021, "Memory-Efficient Pipeline-Parallel DNN
Training" (PipeDream-2BW paper, ICML 2021, Sec. 3.2 "PipeDream-Flush"), as used by Megatron-LM.

Same bubble as GPipe, but a rank starts a backward as soon as one is ready, so it never holds
more than p - r microbatches of activations. `depth_first_order` is the warm-up / steady /
cool-down loop that the interleaved schedule reuses with more than one chunk per rank.
"""

from __future__ import annotations

from meshplan.schedules._common import check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import B, F, Action, ActionKind, Schedule


def depth_first_order(rank: int, num_ranks: int, num_chunks: int, num_microbatches: int,
                      num_warmup: int) -> list[Action]:
    """One rank's actions: `num_warmup` forwards, then forward/backward pairs, then backwards.

    Works over "virtual microbatches" k = 0 .. v*m-1 as Megatron-LM's interleaved schedule
    does (`get_model_chunk_id`): forward k runs chunk (k // p) % v on microbatch
    (k // (p*v)) * p + k % p; backward k walks the chunks in reverse. With one chunk this is
    plain 1F1B (k is the microbatch). Needs m % p == 0 when v > 1.
    """
    p, v = num_ranks, num_chunks
    group = p * v
    total = v * num_microbatches

    def virtual(k: int, kind: ActionKind) -> Action:
        chunk = (k // p) % v
        if kind is B:
            chunk = v - 1 - chunk
        return Action(chunk * p + rank, kind, (k // group) * p + k % p)

    order = [virtual(k, F) for k in range(num_warmup)]
    for k in range(total - num_warmup):
        order.append(virtual(num_warmup + k, F))
        order.append(virtual(k, B))
    order.extend(virtual(k, B) for k in range(total - num_warmup, total))
    return order


def one_f_one_b(num_ranks: int, num_microbatches: int) -> Schedule:
    """1F1B: rank r warms up with min(p-1-r, m) forwards, then alternates F and B."""
    check_sizes("1f1b", num_ranks, num_microbatches)
    p, m = num_ranks, num_microbatches
    orders = {r: depth_first_order(r, p, 1, m, min(p - 1 - r, m)) for r in range(p)}
    return Schedule(orders, m, loop_stage_to_rank(p, 1), "1f1b")
