"""Schedule registry: every `ScheduleSpec`, collected once, and the one generate entry point.

`SCHEDULE_SPECS` is in schedule-code order: a plan's `PlanArrays.schedule` is the index of its
spec here, so new schedules go at the end. `generate` is the one place that checks a (name,
ranks, microbatches, chunks) request and turns a mistake into a one-line `MeshplanError`;
generators check their own size rules too, so they are safe to call directly.
"""

from __future__ import annotations

from collections.abc import Callable

from meshplan.errors import unknown_name
from meshplan.schedules import dualpipe_v, gpipe, interleaved, looped_bfs, one_f_one_b, zb_v
from meshplan.schedules._common import check_sizes
from meshplan.schedules._gc import gc_paused
from meshplan.schedules.ir import Schedule
from meshplan.schedules.spec import ScheduleSpec, check_specs
from meshplan.schedules.zero_bubble import ZB_H1, ZB_H2

SCHEDULE_SPECS: tuple[ScheduleSpec, ...] = (
    one_f_one_b.SPEC,
    gpipe.SPEC,
    interleaved.SPEC,
    looped_bfs.SPEC,
    ZB_H1,
    ZB_H2,
    zb_v.SPEC,
    dualpipe_v.SPEC,
)
"""Every schedule family, in code order (never reorder: codes are indexes into this)."""
check_specs(SCHEDULE_SPECS)

SCHEDULE_NAMES: tuple[str, ...] = tuple(spec.name for spec in SCHEDULE_SPECS)
"""CLI names, in code order."""
_BY_NAME = {spec.name: spec for spec in SCHEDULE_SPECS}

SCHEDULE_GENERATORS: dict[str, Callable[..., Schedule]] = {
    spec.name: spec.generator for spec in SCHEDULE_SPECS
}
"""CLI name -> generator `(num_ranks, num_microbatches, **options) -> Schedule`."""


def schedule_spec(name: str) -> ScheduleSpec:
    """The spec of schedule `name`; `MeshplanError` with the known names otherwise."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise unknown_name("schedule", name, SCHEDULE_NAMES)
    return spec


def spec_by_code(code: int) -> ScheduleSpec:
    """The spec of schedule code `code` (`PlanArrays.schedule`)."""
    return SCHEDULE_SPECS[code]


def schedule_code(name: str) -> int:
    """The code of schedule `name`: its index in `SCHEDULE_SPECS`."""
    return SCHEDULE_SPECS.index(schedule_spec(name))


@gc_paused
def generate(name: str, num_ranks: int, num_microbatches: int, num_chunks: int = 1) -> Schedule:
    """The compute-only schedule `name` for p ranks and m microbatches.

    `num_chunks` is the model chunks (virtual stages) per rank, within the spec's chunk rule
    (1 for single-stage schedules, 2 for V-shaped ones, v >= 2 for interleaved 1F1B).
    Raises `MeshplanError` on bad input.
    """
    spec = schedule_spec(name)
    spec.check_chunks(num_chunks)
    check_sizes(name, num_ranks, num_microbatches)
    return spec.generate(num_ranks, num_microbatches, num_chunks)


def stage_to_rank(name: str, num_ranks: int, num_chunks: int = 1) -> tuple[int, ...]:
    """Rank of each stage: s % p for looped schedules, s or 2p-1-s for V-shaped ones."""
    spec = schedule_spec(name)
    spec.check_chunks(num_chunks)
    check_sizes(name, num_ranks, 1)
    return spec.stage_to_rank(num_ranks, num_chunks)
