"""Chrome / Perfetto trace of a simulated step (opens in ui.perfetto.dev or chrome://tracing).

One process per pipeline rank, one thread per lane: compute; comm (the pipeline sends and the
gradient reduction, as the simulator runs them on the rank's communication stream); and one
lane per axis with exposed collectives, TP / CP / EP. The simulator folds those collectives
into the compute actions' durations (`StageCosts.forward_comm` / `backward_comm`, what the
cost model left exposed after overlap), so their slices lie inside the compute slice they
belong to, with its durations, back to back from its start: how long, not exactly when
within the action. Each pipeline send is linked to the action that receives it on the other
rank by a flow arrow ("s" / "f" events sharing an id, each bound to its enclosing slice; both
placed at the middle of their slice so that the binding is unambiguous). Each slice's `args`
say its micro-batch, stage, chunk (the stage's virtual-pipeline chunk on that rank) and bytes
(a compute slice: the stage's activations of one micro-batch; a transfer or collective: what
it carries). A counter track shows the activation memory each rank holds. Times are
microseconds, as the Trace Event Format requires (Google, "Trace Event Format", 2016).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshplan.sim.engine import Interval, SimResult

_TID = {"compute": 0, "comm": 1, "tp": 2, "cp": 3, "ep": 4}
_THREAD = {"compute": "compute", "comm": "comm (pipeline sends, gradient reduction)",
           "tp": "TP collectives (exposed)", "cp": "CP ring exchange (exposed)",
           "ep": "EP all-to-all (exposed)"}
_COLOR = {"F": "thread_state_running", "B": "thread_state_iowait", "I": "thread_state_iowait",
          "W": "thread_state_unknown", "SEND_F": "rail_load", "SEND_B": "rail_load",
          "tp": "rail_response", "cp": "rail_animation", "ep": "rail_idle"}


def _mid(iv: Interval) -> float:
    return (iv.start + iv.end) / 2 * 1e6


def _args(iv: Interval, chunk: dict[tuple[int, int], int]) -> dict[str, Any]:
    if iv.stage < 0:
        return {}
    args: dict[str, Any] = {"microbatch": iv.microbatch, "stage": iv.stage,
                            "chunk": chunk[iv.rank, iv.stage], "bytes": iv.nbytes}
    if iv.peer >= 0:
        args["to_rank"] = iv.peer
    return args


def _receiver(iv: Interval, compute: dict[tuple[int, int, int, str], Interval]) -> Interval:
    """The action on the destination rank that waits for this send: F of the next stage for
    an activation, B or I of the previous stage for a gradient."""
    if iv.kind == "SEND_F":
        return compute[iv.peer, iv.stage + 1, iv.microbatch, "F"]
    key = (iv.peer, iv.stage - 1, iv.microbatch)
    return compute.get((*key, "B")) or compute[(*key, "I")]


def trace_events(result: SimResult) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    ranks = sorted({iv.rank for iv in result.intervals} | set(range(len(result.busy))))
    lanes = {(iv.rank, iv.stream) for iv in result.intervals}
    for r in ranks:
        events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0,
                       "args": {"name": f"pipeline rank {r}"}})
        for stream, tid in _TID.items():
            if tid <= 1 or (r, stream) in lanes:
                events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid,
                               "args": {"name": _THREAD[stream]}})
    compute = {(iv.rank, iv.stage, iv.microbatch, iv.kind): iv for iv in result.intervals
               if iv.stream == "compute"}
    stages: dict[int, set[int]] = {}
    for r, s, _, _ in compute:
        stages.setdefault(r, set()).add(s)
    chunk = {(r, s): c for r, held in stages.items() for c, s in enumerate(sorted(held))}
    flow = 0
    for iv in result.intervals:
        events.append({"ph": "X", "name": iv.name, "cat": iv.stream, "pid": iv.rank,
                       "tid": _TID[iv.stream], "ts": iv.start * 1e6,
                       "dur": (iv.end - iv.start) * 1e6,
                       "cname": _COLOR.get(iv.kind, "generic_work"),
                       "args": _args(iv, chunk)})
        if iv.peer >= 0:
            dst = _receiver(iv, compute)
            flow += 1
            common = {"name": "pipeline transfer", "cat": "pp", "id": flow}
            events.append({"ph": "s", **common, "pid": iv.rank, "tid": _TID["comm"],
                           "ts": _mid(iv)})
            events.append({"ph": "f", "bp": "e", **common, "pid": dst.rank,
                           "tid": _TID["compute"], "ts": _mid(dst)})
    for r, timeline in enumerate(result.memory_timeline):
        for t, held in timeline:
            events.append({"ph": "C", "name": "activations (GiB)", "pid": r, "ts": t * 1e6,
                           "args": {"GiB": held / 2**30}})
    return events


def write_trace(result: SimResult, path: str | Path) -> None:
    """Write the trace JSON (object form, with displayTimeUnit)."""
    doc = {"traceEvents": trace_events(result), "displayTimeUnit": "ms"}
    Path(path).write_text(json.dumps(doc))
