"""A simulated step's timeline as JSON (`simulate --json`'s `timeline`, drawn by the report):
every box of every rank's compute and communication streams, and the activation memory each
rank holds over the step. Needs a simulation run with `trace=True`."""

from __future__ import annotations

from typing import Any

from meshplan.sim.engine import SimResult

MAX_INTERVALS = 20_000
"""Boxes kept (a page draws each as a shape); beyond, the timeline says it is cut."""


def timeline_json(result: SimResult) -> dict[str, Any]:
    """`{"intervals": [[rank, stream, name, start_s, end_s], ...], "activation_gib":
    [[[t_s, GiB], ...] per rank], "truncated": bool}`; an action's name is its stage, kind
    (F, B, I, W) and micro-batch, e.g. `0F3` (`schedules.ir.Action`)."""
    kept = sorted(result.intervals, key=lambda iv: iv.start)[:MAX_INTERVALS]
    return {"intervals": [[iv.rank, iv.stream, iv.name, iv.start, iv.end] for iv in kept],
            "activation_gib": [[[t, b / 2**30] for t, b in ranks]
                               for ranks in result.memory_timeline],
            "truncated": len(result.intervals) > MAX_INTERVALS}
