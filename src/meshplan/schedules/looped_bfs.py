"""Looped breadth-first pipeline: Lamy-Poirier 2022, "Breadth-First Pipeline Parallelism"
(arXiv:2211.05953, MLSys 2023).

Looped placement like interleaving (stage s on rank s % p), but each rank runs every
microbatch through one chunk before moving to the next. The bubble shrinks like interleaved
1F1B's while activations grow like GPipe's; the payoff is that data-parallel gradient
reduction of a finished chunk overlaps the backward of the next. The order matches torch's
`ScheduleLoopedBFS`: chunks forward in order, then backwards in reverse chunk and
microbatch order.
"""

from __future__ import annotations

from meshplan.schedules._common import check_chunks, check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import Action, B, F, Schedule
from meshplan.schedules.spec import ScheduleSpec, all_in_flight, looped_time


def looped_bfs(num_ranks: int, num_microbatches: int, *, num_chunks: int = 2) -> Schedule:
    """All microbatches through each local chunk in turn, forward then backward."""
    p, m, v = num_ranks, num_microbatches, num_chunks
    check_sizes("looped-bfs", p, m)
    check_chunks("looped-bfs", v, 1)
    orders = {}
    for r in range(p):
        stages = range(r, p * v, p)
        forwards = [Action(s, F, mb) for s in stages for mb in range(m)]
        backwards = [Action(s, B, mb) for s in reversed(stages) for mb in reversed(range(m))]
        orders[r] = forwards + backwards
    return Schedule(orders, m, loop_stage_to_rank(p, v), "looped-bfs")


SPEC = ScheduleSpec(
    name="looped-bfs", generator=looped_bfs, pipeline_time=looped_time, in_flight=all_in_flight,
    forward_first=True,
    min_chunks=1, max_chunks=None, default_chunks=2, torchtitan="LoopedBFS",
)
"""One chunk is allowed: torch's `ScheduleLoopedBFS` takes any number of local stages."""
