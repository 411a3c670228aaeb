"""The request-level event loop: arrivals go through the router to instances; each instance
runs its scheduler's iterations back to back while it has work, each iteration timed by the
cost core; a request that arrives during an iteration waits for the next one."""

from __future__ import annotations

import heapq
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import Deployment
from meshplan.serve.iteration import IterationCost, KVCapacity, kv_capacity
from meshplan.serve.metrics import RequestMetrics
from meshplan.serve.scheduler import Step, VLLMScheduler
from meshplan.serve.workload import Requests


@dataclass(frozen=True)
class ServeResult:
    """What a simulation measured."""

    deployment: Deployment
    capacity: KVCapacity
    metrics: RequestMetrics | None
    """None when the deployment does not fit in memory."""
    iterations: int
    preemptions: int
    kv_usage: np.ndarray
    """(time, used share of the KV blocks) after each iteration, all instances."""

    @property
    def fits(self) -> bool:
        return self.capacity.fits

    @property
    def why_not(self) -> str | None:
        if self.fits:
            return None
        c = self.capacity
        return (f"no room for the KV cache: {c.budget_bytes / 2**30:.1f} GiB budget, weights "
                f"{c.weights_bytes / 2**30:.1f} GiB, workspace {c.workspace_bytes / 2**30:.1f} "
                f"GiB, reserved {c.reserved_bytes / 2**30:.1f} GiB per GPU")

    def to_json(self, slo_ttft_s: float | None = None,
                slo_tpot_s: float | None = None) -> dict[str, Any]:
        m = self.metrics
        out: dict[str, Any] = {
            "deployment": self.deployment.to_json(),
            "fits": self.fits, "why_not": self.why_not,
            "num_requests": 0 if m is None else len(m.arrival_s),
            "num_completed": 0 if m is None else int(np.isfinite(m.finish_s).sum()),
            "memory": self.capacity.to_json(),
            "iterations": self.iterations, "preemptions": self.preemptions,
            "kv_usage_peak": float(self.kv_usage[:, 1].max()) if len(self.kv_usage) else 0.0,
        }
        if m is not None:
            out["metrics"] = m.aggregate(self.deployment.num_gpus, slo_ttft_s, slo_tpot_s)
        return out


def _route(d: Deployment, schedulers: list[VLLMScheduler], k: int) -> int:
    if d.spec.router == "round-robin" or len(schedulers) == 1:
        return k % len(schedulers)
    if d.spec.router == "least-requests":
        load = [len(s.requests) for s in schedulers]
    else:
        load = [sum(r.known + r.output - r.generated - r.computed
                    for r in s.requests.values()) for s in schedulers]
    return int(np.argmin(load))


def simulate(d: Deployment, requests: Requests) -> ServeResult:
    """Run every request to completion through the deployment."""
    capacity = kv_capacity(d)
    if not capacity.fits:
        return ServeResult(d, capacity, None, 0, 0, np.zeros((0, 2)))
    longest = int((requests.input_len + requests.output_len).max())
    if longest > capacity.num_blocks * d.block_size:
        raise MeshplanError(f"input + output length {longest}: one request alone needs more "
                            f"KV cache than an instance holds ({capacity.num_blocks * d.block_size}"
                            " tokens)")
    if d.model.max_seq_len is not None and longest > d.model.max_seq_len:
        raise MeshplanError(f"input + output length {longest}: above {d.model.name}'s "
                            f"max_seq_len ({d.model.max_seq_len})")
    if not d.enable_chunked_prefill and int(requests.input_len.max()) > d.max_num_batched_tokens:
        raise MeshplanError(f"max_num_batched_tokens={d.max_num_batched_tokens}: without chunked "
                            f"prefill it must hold the longest prompt "
                            f"({int(requests.input_len.max())} tokens), as vLLM requires")
    cost = IterationCost(d)
    schedulers = [VLLMScheduler(capacity.num_blocks, d.block_size, d.max_num_seqs,
                                d.max_num_batched_tokens, d.enable_chunked_prefill)
                  for _ in range(d.instances)]
    n = len(requests)
    first_sched = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    last_tok = np.zeros(n)
    itl = array("d")
    usage: list[tuple[float, float]] = []
    busy: list[tuple[float, int, Step]] = []  # (end time, instance, step), a heap
    running = [False] * d.instances
    iterations = 0
    k = 0

    def start(i: int, now: float) -> None:
        nonlocal iterations
        s = schedulers[i]
        step = s.schedule()
        if not step.scheduled:
            running[i] = False
            return
        q = np.array([c for _, c in step.scheduled], dtype=float)
        prefix = np.array([s.requests[rid].computed for rid, _ in step.scheduled], dtype=float)
        sampled = sum(1 for (rid, c), p in zip(step.scheduled, prefix, strict=True)
                      if p + c >= s.requests[rid].known)
        for rid, _ in step.scheduled:
            if np.isnan(first_sched[rid]):
                first_sched[rid] = now
        t = cost.time(len(q), float(q.sum()), float((q * prefix).sum()), float((q * q).sum()),
                      float((prefix + q).sum()), sampled)
        running[i] = True
        iterations += 1
        heapq.heappush(busy, (now + t, i, step))

    while k < n or busy:
        next_arrival = requests.arrival_s[k] if k < n else np.inf
        if busy and busy[0][0] <= next_arrival:
            now, i, step = heapq.heappop(busy)
            sampled, done = schedulers[i].complete(step)
            for rid in sampled:
                if np.isnan(first_tok[rid]):
                    first_tok[rid] = now
                else:
                    itl.append(now - last_tok[rid])
                last_tok[rid] = now
            for rid in done:
                finish[rid] = now
            usage.append((now, sum(s.used_blocks for s in schedulers)
                          / (capacity.num_blocks * d.instances)))
            start(i, now)
        else:
            now = float(next_arrival)
            i = _route(d, schedulers, k)
            schedulers[i].add(k, int(requests.input_len[k]), int(requests.output_len[k]))
            k += 1
            if not running[i]:
                start(i, now)
    assert all(s.free_blocks == s.num_blocks and not s.has_work for s in schedulers)
    metrics = RequestMetrics(requests.arrival_s, first_sched, first_tok, finish,
                             requests.input_len, requests.output_len, np.frombuffer(itl))
    return ServeResult(d, capacity, metrics, iterations,
                       sum(s.preemptions for s in schedulers), np.array(usage).reshape(-1, 2))
