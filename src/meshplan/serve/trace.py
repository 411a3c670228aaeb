"""A Perfetto / Chrome trace of a simulation (the trace-event JSON format: `ph`, `ts` and
`dur` in microseconds, `pid` / `tid`), written only when asked (`simulate(..., trace=...)`,
`meshplan serve simulate --trace out.json`).

One process per instance, one thread per pipeline stage (so one stage's iteration slices never
overlap) and, on a disaggregated prefill instance, a `kv send` thread with its KV transfers
(they run one at a time per sending instance), each linked by a flow arrow ("s" / "f", one id
per transfer) to the first iteration on the decode instance's first stage that starts once
the KV has landed (the flow end binds to the next slice, the Trace Event Format's default):
the earliest iteration that can run the request. Each iteration is a complete ("X") slice whose
args give its prefill and decode sequences, its query tokens and the KV blocks in use; a
fast-forwarded decode run gives one slice per step, all with the blocks in use at the run's
end. Requests are async spans ("b"/"e", id = request index) from arrival to the last token,
their first token an async instant ("n"), on a `requests` process.

Bounded size: at most `max_slices` iteration and transfer slices (the earliest) and
`max_requests` request spans (the first arrivals), 100,000 and 10,000 by default (about 15 MB
and 3 MB of JSON); `otherData` says how many were left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MAX_SLICES = 100_000
MAX_REQUESTS = 10_000


class Tracer:
    """Collects trace events while a simulation runs (cheap when the caps are reached)."""

    def __init__(self, max_slices: int = MAX_SLICES, max_requests: int = MAX_REQUESTS):
        self.max_slices = max_slices
        self.max_requests = max_requests
        self.events: list[dict[str, Any]] = []
        self.slices = 0
        self.dropped = 0
        self.flows = 0

    def name_instance(self, pid: int, name: str, stages: int, kv_send: bool) -> None:
        self.events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                            "args": {"name": name}})
        for s in range(stages):
            self.events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": s,
                                "args": {"name": f"stage {s}" if stages > 1 else "iterations"}})
        if kv_send:
            self.events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": stages,
                                "args": {"name": "kv send"}})

    def _slice(self, pid: int, tid: int, name: str, start: float, end: float,
               args: dict[str, Any]) -> None:
        if self.slices >= self.max_slices:
            self.dropped += 1
            return
        self.slices += 1
        self.events.append({"ph": "X", "name": name, "pid": pid, "tid": tid,
                            "ts": start * 1e6, "dur": (end - start) * 1e6, "args": args})

    def iteration(self, pid: int, stage: int, start: float, end: float, prefill: int,
                  decode: int, tokens: int, kv_blocks: int) -> None:
        self._slice(pid, stage, "prefill" if prefill else "decode", start, end,
                    {"prefill_seqs": prefill, "decode_seqs": decode, "tokens": tokens,
                     "kv_blocks_used": kv_blocks})

    def decode_run(self, pid: int, ends: list[float], seqs: int, kv_blocks: int) -> None:
        for j in range(len(ends) - 1):
            if self.slices >= self.max_slices:
                self.dropped += len(ends) - 1 - j
                return
            self.iteration(pid, 0, ends[j], ends[j + 1], 0, seqs, seqs, kv_blocks)

    def transfer(self, pid: int, tid: int, rid: int, dst: int, start: float, end: float,
                 nbytes: float) -> None:
        kept = self.slices
        self._slice(pid, tid, "kv transfer", start, end,
                    {"request": rid, "to_instance": dst, "bytes_per_gpu": nbytes})
        if self.slices > kept:
            self.flows += 1
            common = {"name": "kv transfer", "cat": "kv", "id": self.flows}
            self.events.append({**common, "ph": "s", "pid": pid, "tid": tid,
                                "ts": (start + end) / 2 * 1e6})
            self.events.append({**common, "ph": "f", "pid": dst, "tid": 0, "ts": end * 1e6})

    def write(self, path: str | Path, arrival: np.ndarray, first_token: np.ndarray,
              finish: np.ndarray, pid: int) -> None:
        """Add the request spans (the first `max_requests`) and write the JSON file."""
        events = list(self.events)
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": "requests"}})
        n = min(len(arrival), self.max_requests)
        for rid in range(n):
            common = {"cat": "request", "name": "request", "id": rid, "pid": pid, "tid": 0}
            events.append({**common, "ph": "b", "ts": float(arrival[rid]) * 1e6})
            if np.isfinite(first_token[rid]):
                events.append({**common, "ph": "n", "name": "first token",
                               "ts": float(first_token[rid]) * 1e6})
            events.append({**common, "ph": "e", "ts": float(finish[rid]) * 1e6})
        other = {"slices": self.slices, "slices_left_out": self.dropped,
                 "requests": n, "requests_left_out": len(arrival) - n}
        Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms",
                                          "otherData": other}))
