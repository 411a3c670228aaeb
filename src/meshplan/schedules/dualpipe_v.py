"""DualPipeV: the V-shape ("cut-in-half") form of DualPipe. DualPipe is from DeepSeek-AI,
"DeepSeek-V3 Technical Report" (arXiv:2412.19437, Sec. 3.2.1, Fig. 5); the V form and its
code are in github.com/deepseek-ai/DualPipe (`DualPipeV`).

DualPipe feeds microbatches from both ends of the pipeline and overlaps the forward of one
chunk with the backward of another so that MoE all-to-all traffic hides under compute.
DualPipeV keeps that schedule on half the ranks by folding it into a V: rank r holds stage r
and stage 2p-1-r. Phases and counts follow torch's `ScheduleDualPipeV` (itself from the
DeepSeek code), so the orders match it once torch's overlapped pairs are flattened.

IR simplification: an overlapped "F&B" pair (torch's `OVERLAP_F_B` action) is written as its
F followed by its B. The order and the dependencies are unchanged; a simulator that wants the
overlap can treat an F directly followed by a B of the other chunk on the same rank as one
overlapped step.
"""

from __future__ import annotations

from meshplan.schedules._common import Emitter, check_sizes, v_stage_to_rank
from meshplan.schedules.ir import Action, ActionKind, B, F, I, Schedule


def _rank_order(rank: int, num_ranks: int, num_microbatches: int) -> list[Action]:
    """One rank's DualPipeV order (torch's eight steps, F&B pairs flattened)."""
    p, r, m = num_ranks, rank, num_microbatches
    s0, s1 = r, 2 * p - 1 - r
    e = Emitter()
    e.repeat(2 * (p - r - 1), (s0, F))  # 1: chunk-0 forwards down the V
    e.repeat(r + 1, (s0, F), (s1, F))  # 2: both chunks forward
    for _ in range(p - r - 1):  # 3: zero-bubble I, W, F on chunk 1
        e(s1, I)
        e.pop_w()
        e(s1, F)
    e.repeat(m - 2 * p + r + 1, (s0, F), (s1, B), (s1, F), (s0, B))  # 4: main F&B pairs
    e.repeat(p - r - 1, (s1, B), (s1, F), (s0, B))  # 5: B then F&B
    split = False  # 6: backwards; the second half splits into I (W deferred to fill bubbles)
    for i in range(r + 1):
        split = split or (i == (r + 1) // 2 and r % 2 == 1)
        e(s1, _backward(split))
        split = split or (i == (r + 1) // 2 and r % 2 == 0)
        e(s0, _backward(split))
    for _ in range(p - r - 1):  # 7: W, backward
        e.pop_w()
        e(s0, _backward(split))
    for _ in range(r + 1):  # 8: remaining weight gradients
        e.pop_w()
    return e.actions(m)


def _backward(split: bool) -> ActionKind:
    return I if split else B


def dualpipe_v(num_ranks: int, num_microbatches: int) -> Schedule:
    """DualPipeV over p ranks and 2p stages; needs m >= 2p (torch and DeepSeek's rule)."""
    check_sizes("dualpipe-v", num_ranks, 1)
    check_sizes("dualpipe-v", num_ranks, num_microbatches, 2 * num_ranks, "2 * num_ranks")
    p, m = num_ranks, num_microbatches
    orders = {r: _rank_order(r, p, m) for r in range(p)}
    return Schedule(orders, m, v_stage_to_rank(p), "dualpipe-v")
