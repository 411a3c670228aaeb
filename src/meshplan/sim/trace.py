"""Chrome / Perfetto trace of a simulated step (opens in ui.perfetto.dev or chrome://tracing).

One process per pipeline rank, one thread per stream (compute, comm), plus a counter track of
the activation memory each rank holds. Times are microseconds, as the Trace Event Format
requires (Google, "Trace Event Format", 2016).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshplan.sim.engine import SimResult

_TID = {"compute": 0, "comm": 1}
_COLOR = {"F": "thread_state_running", "B": "thread_state_iowait", "I": "thread_state_iowait",
          "W": "thread_state_unknown", "s": "rail_load"}


def trace_events(result: SimResult) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    ranks = sorted({iv.rank for iv in result.intervals} | set(range(len(result.busy))))
    for r in ranks:
        events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0,
                       "args": {"name": f"pipeline rank {r}"}})
        for stream, tid in _TID.items():
            events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid,
                           "args": {"name": stream}})
    for iv in result.intervals:
        kind = next((c for c in iv.name if c.isalpha()), "s")
        events.append({"ph": "X", "name": iv.name, "cat": iv.stream, "pid": iv.rank,
                       "tid": _TID[iv.stream], "ts": iv.start * 1e6,
                       "dur": (iv.end - iv.start) * 1e6, "cname": _COLOR.get(kind, "generic_work")})
    for r, timeline in enumerate(result.memory_timeline):
        for t, held in timeline:
            events.append({"ph": "C", "name": "activations (GiB)", "pid": r, "ts": t * 1e6,
                           "args": {"GiB": held / 2**30}})
    return events


def write_trace(result: SimResult, path: str | Path) -> None:
    """Write the trace JSON (object form, with displayTimeUnit)."""
    doc = {"traceEvents": trace_events(result), "displayTimeUnit": "ms"}
    Path(path).write_text(json.dumps(doc))
