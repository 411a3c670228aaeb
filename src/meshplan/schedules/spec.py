"""`ScheduleSpec`: everything the rest of meshplan knows about one pipeline schedule family.

Each generator module declares its spec next to its generator; `registry` collects them in
one tuple whose order fixes the schedule codes (`PlanArrays.schedule`). Plan validation, the
legality rules, the closed-form cost model, the search space, the simulator and the exporters
all read these fields, so adding a schedule touches one module (and its tests).

Closed forms (p ranks, m micro-batches, v chunks per rank, per-micro-batch times F, B = I + W)
are vectorised: one entry per plan. The shared ones live here:
- GPipe / 1F1B (Huang et al. 2019; Narayanan et al. 2021): step = (m + p - 1)(F + B) with equal
  stages; with unequal stages sum_r (F_r + B_r) + (m - 1) max_r (F_r + B_r).
- Looped placement, interleaved 1F1B (Narayanan et al. 2021, Sec. 2.2.2) and breadth-first
  (Lamy-Poirier 2022): bubble (p - 1)/v (F + B).
- Activation memory: 1F1B keeps p micro-batches in flight on the first rank, GPipe m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from meshplan.schedules._common import check_chunks, loop_stage_to_rank, v_stage_to_rank
from meshplan.schedules.ir import Schedule


@dataclass(frozen=True)
class PipelineTerms:
    """Inputs of the closed-form pipeline times, one entry per plan.

    first/middle/last: F + B of one micro-batch on that rank (all its chunks).
    fwd, bwd_i, bwd_w: the middle rank's F, I, W per micro-batch (all its chunks).
    """

    p: np.ndarray
    m: np.ndarray
    v: np.ndarray
    first: np.ndarray
    middle: np.ndarray
    last: np.ndarray
    fwd: np.ndarray
    bwd_i: np.ndarray
    bwd_w: np.ndarray

    @cached_property
    def ranks_total(self) -> np.ndarray:
        """One micro-batch through every rank: sum_r (F_r + B_r)."""
        return np.where(self.p > 1, self.first + self.last + (self.p - 2) * self.middle,
                        self.first)

    @cached_property
    def slowest(self) -> np.ndarray:
        return np.maximum(np.maximum(self.first, self.last), self.middle)

    @cached_property
    def steady(self) -> np.ndarray:
        """m micro-batches on the slowest rank, no bubble."""
        return self.m * self.slowest


PipelineTime = Callable[[PipelineTerms], np.ndarray]
InFlight = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(p, m, v, rank) -> micro-batches' worth of that rank's activations held at its peak (a
whole rank's share of the model counts 1). Non-increasing or constant over the middle ranks,
so a rank's neighbours bound it (`cost.train.memory` relies on that; a test checks it)."""


def fill_drain_time(t: PipelineTerms) -> np.ndarray:
    """GPipe and 1F1B: fill, steady state on the slowest rank, drain."""
    return t.ranks_total + (t.m - 1) * t.slowest


def warm_up_bubble(t: PipelineTerms, at_p: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Bubble of a zero-bubble schedule planned for 2p - 1 micro-batches and run with m of
    them (p <= m): `at_p` at m = p, falling linearly to the `full` pipeline's bubble at
    m = 2p - 1 and staying there. Each micro-batch short of 2p - 1 leaves one steady-state
    slot of the warm-up unfilled; the line is what the ZB-H2 and ZB-V generators' schedules
    take on equal stages (tests/unit/test_schedule_specs.py measures it with the simulator)."""
    short = np.clip((2 * t.p - 1 - t.m) / np.maximum(t.p - 1, 1), 0.0, 1.0)
    return full + short * np.maximum(at_p - full, 0.0)


def looped_time(t: PipelineTerms) -> np.ndarray:
    """Looped placement: the fill-and-drain bubble divided by the v chunks per rank."""
    return t.steady + (t.ranks_total - t.slowest) / t.v


def ranks_in_flight(p: np.ndarray, m: np.ndarray, v: np.ndarray,
                    rank: np.ndarray) -> np.ndarray:
    """1F1B: rank r runs p - r warm-up forwards before its first backward, so it holds
    p - r micro-batches (fewer when m is smaller; Narayanan et al. 2021 Sec. 2.2.1)."""
    return np.minimum(p - rank, m).astype(float)


def all_in_flight(p: np.ndarray, m: np.ndarray, v: np.ndarray,
                  rank: np.ndarray) -> np.ndarray:
    """All-forward-first schedules hold every micro-batch at the turn, on every rank."""
    return np.broadcast_to(m, np.broadcast(m, rank).shape).astype(float)


W_ACTIVATION_SHARE = 0.5
"""Share of a stage's activations a deferred weight-gradient pass (W) still needs: the inputs
of the linear layers (the rest is freed by the input-gradient pass I)."""


def same_in_flight(count: InFlight) -> InFlight:
    """A schedule whose every rank holds what its first rank holds (balanced memory)."""
    def on_rank(p: np.ndarray, m: np.ndarray, v: np.ndarray, rank: np.ndarray) -> np.ndarray:
        return count(p, m, v, np.zeros_like(rank))
    return on_rank


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule family: generator, chunk and micro-batch rules, closed forms, engine names."""

    name: str
    """CLI name."""
    generator: Callable[..., Schedule]
    """`(num_ranks, num_microbatches[, num_chunks=v]) -> Schedule`."""
    pipeline_time: PipelineTime
    """Closed-form time of all micro-batches through the pipeline, flush included."""
    in_flight: InFlight
    forward_first: bool = False
    """Every forward runs before any backward (GPipe, looped BFS): the last stage holds all
    m micro-batches' LM-head activations, not one."""
    min_chunks: int = 1
    """Least model chunks (virtual stages) per rank."""
    max_chunks: int | None = 1
    """Most chunks per rank (None: no limit)."""
    default_chunks: int = 1
    """Chunks per rank when a plan does not say (`Plan.vpp`)."""
    placement: Literal["looped", "v"] = "looped"
    """looped: stage s on rank s % p; v: rank r holds stages r and 2p-1-r."""
    min_microbatches_per_rank: int = 0
    """Plans need m >= this * p micro-batches (the closed forms and peaks assume it)."""
    microbatches_multiple_of_ranks: bool = False
    """Plans need m % p == 0 (Megatron-LM's rule for interleaving)."""
    staggered: bool = False
    """The step is the longest rank span: consecutive iterations overlap across ranks (Zero
    Bubble's optimizer post-validation, Qi et al. 2024 Sec. 4)."""
    megatron: str | None = None
    """Megatron-Core's schedule function (core/pipeline_parallel/schedules.py), or None."""
    torchtitan: str | None = None
    """torch's schedule class name (`get_schedule_class`) as torchtitan 0.2.2 runs it, or None."""
    deepspeed: str | None = None
    """DeepSpeed's pipeline schedule class (runtime/pipe/schedule.py), or None."""

    @property
    def takes_chunks(self) -> bool:
        """Whether the chunk count is a choice (the generator takes `num_chunks`)."""
        return self.min_chunks != self.max_chunks

    def allows_chunks(self, num_chunks: int) -> bool:
        return self.min_chunks <= num_chunks and (
            self.max_chunks is None or num_chunks <= self.max_chunks)

    def check_chunks(self, num_chunks: int) -> None:
        """Raise the one-line `num_chunks` error when the count is outside the rule."""
        check_chunks(self.name, num_chunks, self.min_chunks, self.max_chunks)

    def chunk_choices(self, most: int) -> range:
        """Chunk counts a search tries, up to `most` where the rule has no limit."""
        top = self.max_chunks if self.max_chunks is not None else most
        return range(self.min_chunks, top + 1)

    def generate(self, num_ranks: int, num_microbatches: int, num_chunks: int) -> Schedule:
        if self.takes_chunks:
            return self.generator(num_ranks, num_microbatches, num_chunks=num_chunks)
        return self.generator(num_ranks, num_microbatches)

    def stage_to_rank(self, num_ranks: int, num_chunks: int) -> tuple[int, ...]:
        if self.placement == "v":
            return v_stage_to_rank(num_ranks)
        return loop_stage_to_rank(num_ranks, num_chunks)

    def chunk_rule(self) -> str:
        """The chunk rule in words, for error messages."""
        if self.min_chunks == self.max_chunks:
            return f"exactly {self.min_chunks}"
        if self.max_chunks is None:
            return f">= {self.min_chunks}"
        return f"{self.min_chunks}..{self.max_chunks}"


def check_specs(specs: tuple[ScheduleSpec, ...]) -> None:
    """Internal consistency of the registered specs (names unique, chunk rules coherent)."""
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), f"duplicate schedule names in {names}"
    for s in specs:
        assert s.allows_chunks(s.default_chunks), f"{s.name}: default chunks outside its rule"
        assert s.placement != "v" or s.min_chunks == s.max_chunks == 2, f"{s.name}: V is 2"
