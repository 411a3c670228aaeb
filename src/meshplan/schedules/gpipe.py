"""GPipe: every forward, then every backward (Huang et al. 2019, "GPipe: Efficient Training of
Giant Neural Networks using Pipeline Parallelism", NeurIPS 2019, Fig. 2c).

Simplest correct pipeline, and the memory worst case: each rank holds all m microbatches'
activations at the turn. Backwards run in microbatch order, as torch's `ScheduleGPipe` does.
"""

from __future__ import annotations

from meshplan.schedules._common import check_sizes, loop_stage_to_rank
from meshplan.schedules.ir import Action, B, F, Schedule
from meshplan.schedules.spec import ScheduleSpec, all_in_flight, fill_drain_time


def gpipe(num_ranks: int, num_microbatches: int) -> Schedule:
    """All-forward-all-backward, one stage per rank (stage r on rank r)."""
    check_sizes("gpipe", num_ranks, num_microbatches)
    mbs = range(num_microbatches)
    orders = {
        r: [Action(r, F, mb) for mb in mbs] + [Action(r, B, mb) for mb in mbs]
        for r in range(num_ranks)
    }
    return Schedule(orders, num_microbatches, loop_stage_to_rank(num_ranks, 1), "gpipe")


SPEC = ScheduleSpec(
    name="gpipe", generator=gpipe, pipeline_time=fill_drain_time, in_flight=all_in_flight,
    forward_first=True,
    torchtitan="GPipe",
)
