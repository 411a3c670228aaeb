"""Schedule registry: CLI name -> generator, chunk rules and stage placement, one entry point.

`generate` is the one place that checks a (name, ranks, microbatches, chunks) request and
turns a mistake into a one-line `MeshplanError`; generators check their own size rules too,
so they are safe to call directly.
"""

from __future__ import annotations

from collections.abc import Callable

from meshplan.errors import unknown_name
from meshplan.schedules._common import (
    check_chunks,
    check_sizes,
    loop_stage_to_rank,
    v_stage_to_rank,
)
from meshplan.schedules._gc import gc_paused
from meshplan.schedules.dualpipe_v import dualpipe_v
from meshplan.schedules.gpipe import gpipe
from meshplan.schedules.interleaved import interleaved_1f1b
from meshplan.schedules.ir import Schedule
from meshplan.schedules.looped_bfs import looped_bfs
from meshplan.schedules.one_f_one_b import one_f_one_b
from meshplan.schedules.zb_v import zb_v
from meshplan.schedules.zero_bubble import zb_h1, zb_h2

SCHEDULE_GENERATORS: dict[str, Callable[..., Schedule]] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
    "interleaved-1f1b": interleaved_1f1b,
    "looped-bfs": looped_bfs,
    "zb-h1": zb_h1,
    "zb-h2": zb_h2,
    "zb-v": zb_v,
    "dualpipe-v": dualpipe_v,
}
"""CLI name -> generator `(num_ranks, num_microbatches, **options) -> Schedule`."""

SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULE_GENERATORS)

LOOPED = frozenset({"interleaved-1f1b", "looped-bfs"})
"""Schedules taking `num_chunks` chunks per rank, stage s on rank s % p."""
V_SHAPED = frozenset({"zb-v", "dualpipe-v"})
"""Schedules with exactly 2 chunks per rank, rank r holding stages r and 2p-1-r."""


CHUNKS: dict[str, tuple[int, int | None]] = {
    "interleaved-1f1b": (2, None),
    "looped-bfs": (1, None),
    "zb-v": (2, 2),
    "dualpipe-v": (2, 2),
}
"""Allowed chunks per rank (least, most) where not exactly one."""


def _check_chunks(name: str, num_chunks: int) -> None:
    check_chunks(name, num_chunks, *CHUNKS.get(name, (1, 1)))


def _check_name(name: str) -> None:
    if name not in SCHEDULE_GENERATORS:
        raise unknown_name("schedule", name, SCHEDULE_NAMES)


@gc_paused
def generate(name: str, num_ranks: int, num_microbatches: int, num_chunks: int = 1) -> Schedule:
    """The compute-only schedule `name` for p ranks and m microbatches.

    `num_chunks` is the model chunks (virtual stages) per rank: 1 for single-stage schedules,
    2 for V-shaped ones, v >= 2 for interleaved 1F1B. Raises `MeshplanError` on bad input.
    """
    _check_name(name)
    _check_chunks(name, num_chunks)
    check_sizes(name, num_ranks, num_microbatches)
    if name in LOOPED:
        return SCHEDULE_GENERATORS[name](num_ranks, num_microbatches, num_chunks=num_chunks)
    return SCHEDULE_GENERATORS[name](num_ranks, num_microbatches)


def stage_to_rank(name: str, num_ranks: int, num_chunks: int = 1) -> tuple[int, ...]:
    """Rank of each stage: s % p for looped schedules, s or 2p-1-s for V-shaped ones."""
    _check_name(name)
    _check_chunks(name, num_chunks)
    check_sizes(name, num_ranks, 1)
    if name in V_SHAPED:
        return v_stage_to_rank(num_ranks)
    return loop_stage_to_rank(num_ranks, num_chunks)
