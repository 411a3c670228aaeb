"""Closed-form pipeline time and in-flight micro-batches, dispatched over the schedule specs.

The first pass of the planner; `meshplan.sim` replaces it with an event simulation. Each
schedule's formula, with its source, is its `ScheduleSpec.pipeline_time` and `in_flight`
(declared next to its generator in `meshplan.schedules`); the codes in `schedule` are indexes
into `SCHEDULE_SPECS` (the order of `specs.plan.SCHEDULES`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from meshplan.schedules.registry import SCHEDULE_SPECS
from meshplan.schedules.spec import PipelineTerms, ScheduleSpec


def pipeline_time(schedule: np.ndarray, p: np.ndarray, m: np.ndarray, v: np.ndarray,
                  first: np.ndarray, middle: np.ndarray, last: np.ndarray,
                  fwd: np.ndarray, bwd_i: np.ndarray, bwd_w: np.ndarray) -> np.ndarray:
    """Time of all micro-batches through the pipeline, flush included.

    first/middle/last: F + B of one micro-batch on that rank (all its chunks).
    fwd, bwd_i, bwd_w: the middle rank's F, I, W per micro-batch (all its chunks).
    """
    terms = PipelineTerms(p, m, v, first, middle, last, fwd, bwd_i, bwd_w)
    out = _by_schedule(schedule, lambda spec: spec.pipeline_time(terms))
    return np.where(p > 1, out, m * first)


def in_flight_microbatches(schedule: np.ndarray, p: np.ndarray, m: np.ndarray,
                           v: np.ndarray, rank: np.ndarray | int = 0) -> np.ndarray:
    """Micro-batches' worth of one rank's activations held at the peak, on `rank`."""
    r = np.broadcast_to(np.asarray(rank), np.broadcast(p, rank).shape)
    out = _by_schedule(schedule, lambda spec: spec.in_flight(p, m, v, r))
    return np.where(p > 1, out, 1.0)


def head_rank(schedule: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Rank of the last stage (LM head and loss): p - 1, or 0 for V-shaped placements."""
    v_shaped = _by_schedule(schedule, lambda spec: np.asarray(float(spec.placement == "v")))
    return np.where(v_shaped > 0, 0, p - 1)


def head_in_flight(schedule: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Micro-batches whose LM-head activations the last stage holds at once: m when every
    forward runs first, else 1 (its backward follows its forward at once)."""
    first = _by_schedule(schedule, lambda spec: np.asarray(float(spec.forward_first)))
    return np.where(first > 0, m, 1).astype(float)


def _by_schedule(schedule: np.ndarray,
                 value: Callable[[ScheduleSpec], np.ndarray]) -> np.ndarray:
    """Each plan's entry of `value(spec)` for its schedule's spec (only schedules present)."""
    codes = np.asarray(schedule)
    out = np.zeros(codes.shape)
    for code in np.unique(codes):
        out = np.where(codes == code, value(SCHEDULE_SPECS[int(code)]), out)
    return out
