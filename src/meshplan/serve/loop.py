"""The request-level event loop: arrivals go through the router to instances; each instance
runs its scheduler's iterations back to back while it has work, each iteration timed by the
cost core; a request that arrives during an iteration waits for the next one, and requests
arriving at one instant are all queued before an idle instance schedules.

Fast-forward (the default; `plain=True` turns it off): when an instance's next steps are
decode-only over its whole running set and nothing can change that batch before the next
event (no waiting request it could admit, no request finishing, enough free blocks for every
block boundary crossed, no arrival and no other instance's step ending in between), those K
identical-in-shape steps are timed at once (`IterationCost.decode_times`) and applied in one
go: the same step times, token times, blocks and counts as K plain iterations. Inter-token
gaps are kept as (value, count) pairs (one per step, its batch sharing it), and the KV-usage
timeline gets one sample at the end of a fast-forwarded run (its peak: usage only grows
inside one)."""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import Deployment
from meshplan.serve.iteration import IterationCost, KVCapacity, kv_capacity
from meshplan.serve.metrics import RequestMetrics
from meshplan.serve.schedulers import Scheduler, Step, make_scheduler
from meshplan.serve.workload import ArrivalFeed, Requests


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
    """(time, used share of the KV blocks), all instances: after each plain iteration and at the
    end of each fast-forwarded run, halved past a bound keeping the larger of neighbours
    (`Timeline`), so its peak is the run's."""

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


class Timeline:
    """(time, value) samples in bounded memory: at `2 cap` samples each pair of neighbours
    becomes the one with the larger value (the peak survives every halving); the latest
    sample is always returned."""

    def __init__(self, cap: int = 1 << 16):
        self.cap = cap
        self.t = array("d")
        self.v = array("d")
        self.last: tuple[float, float] | None = None

    def add(self, t: float, v: float) -> None:
        self.t.append(t)
        self.v.append(v)
        self.last = (t, v)
        if len(self.t) >= 2 * self.cap:
            tp = np.frombuffer(self.t).reshape(-1, 2)
            vp = np.frombuffer(self.v).reshape(-1, 2)
            rows = np.arange(len(tp))
            pick = np.argmax(vp, axis=1)
            self.t, self.v = array("d"), array("d")
            self.t.frombytes(tp[rows, pick].tobytes())
            self.v.frombytes(vp[rows, pick].tobytes())

    def to_array(self) -> np.ndarray:
        out = np.stack([np.frombuffer(self.t), np.frombuffer(self.v)], axis=1)
        if self.last is not None and (len(out) == 0 or tuple(out[-1]) != self.last):
            out = np.concatenate([out, np.array([self.last])])
        return out.reshape(-1, 2)


def _route(d: Deployment, schedulers: list[Scheduler], k: int) -> int:
    if d.spec.router == "round-robin" or len(schedulers) == 1:
        return k % len(schedulers)
    if d.spec.router == "least-requests":
        load = [len(s.requests) for s in schedulers]
    else:
        load = [sum(r.known + r.output - r.generated - r.computed
                    for r in s.requests.values()) for s in schedulers]
    return int(np.argmin(load))


def simulate(d: Deployment, requests: Requests, plain: bool = False) -> ServeResult:
    """Run every request to completion through the deployment. `plain=True`: one iteration
    at a time, each timed by the layer core itself (`IterationCost.time_reference`), every
    inter-token gap and KV-usage sample kept one by one (the reference for the fast path)."""
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
    time_of = cost.time_reference if plain else cost.time
    schedulers = [make_scheduler(d, capacity) for _ in range(d.instances)]
    n = len(requests)
    feed = ArrivalFeed(requests)  # closed loop: a finish brings its client's next request
    closed = requests.clients > 0
    prefix_group, prefix_len = requests.prefix_group, requests.prefix_len
    input_len, output_len = requests.input_len, requests.output_len
    first_sched = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    itl_v = array("d")
    itl_w = array("I")  # counts (uint32)
    usage = Timeline()
    total_blocks = capacity.num_blocks * d.instances
    bs = d.block_size
    busy: list[tuple[float, int, float, Step]] = []  # (end, instance, start, step), a heap
    running = [False] * d.instances
    iterations = 0
    k = 0
    isnan = math.isnan
    straddle_ok = d.instances == 1 or d.spec.router == "round-robin"

    def record_usage(now: float) -> None:
        usage.add(now, sum(s.used_blocks for s in schedulers) / total_blocks)

    def fast_forward(i: int, now: float) -> tuple[float, bool]:
        """Apply the decode-only steps of instance `i` that nothing can interrupt from `now`;
        return when the last of them ends (`now` when there is none), and whether that last
        step was in progress at the next arrival (the instance's next schedule must then wait
        for the arrival to be queued: the caller posts an empty step ending then)."""
        nonlocal iterations
        s = schedulers[i]
        if not s.fast_forward_ok:
            return now, False
        run = s.running
        nseq = len(run)
        if nseq == 0 or nseq > s.max_num_batched_tokens or (s.waiting and nseq < s.max_num_seqs):
            return now, False
        reqs = s.requests
        left = 1 << 62
        psum = 0
        for rid in run:
            r = reqs[rid]
            c = r.computed
            if r.prompt + r.generated - c != 1:
                return now, False
            if r.output - r.generated < left:
                left = r.output - r.generated
            psum += c
        K = left  # up to the step where the first requests finish, that one included
        nxt = feed.next_s
        other = busy[0][0] if busy else math.inf
        # Step by step (`IterationCost.decode_times`' floats, summed as the heap would):
        # steps ending by the next arrival (completions go first, as the heap orders them)
        # and strictly before another instance's next step ends (its usage sample reads this
        # instance's blocks). The step in progress at the arrival may run too where the
        # router does not read the instances' state.
        base, layers, head, overhead, per_pair, per_q, per_kv = cost.decode_terms(nseq)
        nb = float(nseq)
        ends = [now]
        end = now
        prefix = float(psum)
        straddle = False
        while len(ends) <= K:
            if end > nxt:
                break
            core = max(per_pair * (prefix + 0.5 * nb), per_q * nb + per_kv * (prefix + nb))
            nxt_end = end + (base + layers * core + head + overhead)
            if nxt_end >= other or (nxt_end > nxt and not straddle_ok):
                break
            ends.append(nxt_end)
            if nxt_end > nxt:
                straddle = True
                break
            end = nxt_end
            prefix += nb
        K = len(ends) - 1
        if K <= 0:
            return now, False
        # Blocks: a request holds those of its computed tokens, so K steps need at most
        # ceil(K / block_size) more each; count exactly only when that bound does not fit.
        if nseq * -(-K // bs) > s.free_blocks:
            comp = np.array([reqs[rid].computed for rid in run], dtype=np.int64)
            blocks = np.array([reqs[rid].blocks for rid in run], dtype=np.int64)

            def need(steps: int) -> int:
                return int(np.maximum(-(-(comp + steps) // bs) - blocks, 0).sum())

            if need(K) > s.free_blocks:
                lo, hi = 0, K  # need(lo) fits, need(hi) does not
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if need(mid) <= s.free_blocks else (lo, mid)
                K, straddle = lo, False
                if K == 0:
                    return now, False
        # usage after step K - 1 (a sample when step K frees the finished requests' blocks)
        before_last = sum(x.used_blocks for x in schedulers)
        finishing = left == K and K > 1
        e1, eK = ends[1], ends[K]
        same = 0
        done = []
        for rid in run:
            r = reqs[rid]
            if r.generated == 0:
                first_tok[rid] = e1
            else:
                lt = r.last_token_s
                if lt == now:
                    same += 1
                else:
                    itl_v.append(e1 - lt)
                    itl_w.append(1)
            r.last_token_s = eK
            if finishing:
                c = -(-(r.computed + K - 1) // bs)
                if c > r.blocks:
                    before_last += c - r.blocks
            r.computed += K
            r.generated += K
            c = -(-r.computed // bs)
            if c > r.blocks:
                s.free_blocks -= c - r.blocks
                r.blocks = c
            if r.generated >= r.output:
                done.append(rid)
        if same:
            itl_v.append(e1 - now)
            itl_w.append(same)
        if K > 1:
            itl_v.extend([ends[j + 1] - ends[j] for j in range(1, K)])
            itl_w.extend([nseq] * (K - 1))
        if finishing:
            usage.add(ends[K - 1], before_last / total_blocks)
        s.advanced(K)
        for rid in done:  # as `Scheduler.complete`
            s.finish(rid)
            finish[rid] = eK
            if closed:
                feed.finished(rid, eK)
        iterations += K
        record_usage(eK)
        return eK, straddle

    def start(i: int, now: float) -> None:
        nonlocal iterations
        s = schedulers[i]
        while not plain:  # fast-forwarded runs back to back (a finish ends one)
            then, deferred = fast_forward(i, now)
            if deferred:
                running[i] = True
                heapq.heappush(busy, (then, i, then, Step([], 0)))
                return
            if then == now:
                break
            now = then
        step = s.schedule()
        if not step.scheduled:
            running[i] = False
            return
        for rid in step.admitted:
            if isnan(first_sched[rid]):
                first_sched[rid] = now
        t = time_of(len(step.scheduled), float(step.tokens), float(step.query_prefix),
                    float(step.query_squares), float(step.kv_tokens), step.sampled)
        running[i] = True
        iterations += 1
        heapq.heappush(busy, (now + t, i, now, step))

    idle: list[int] = []  # instances given a request at `now`, started once all are in
    while feed.next_s != math.inf or busy:
        next_arrival = feed.next_s
        if busy and busy[0][0] <= next_arrival:
            now, i, began, step = heapq.heappop(busy)
            sampled_states, done = schedulers[i].complete(step)
            same = 0
            for r in sampled_states:
                if r.generated == 1:
                    first_tok[r.rid] = now
                else:
                    lt = r.last_token_s
                    if lt == began and not plain:
                        same += 1
                    else:
                        itl_v.append(now - lt)
                        itl_w.append(1)
                r.last_token_s = now
            if same:
                itl_v.append(now - began)
                itl_w.append(same)
            for rid in done:
                finish[rid] = now
                if closed:
                    feed.finished(rid, now)
            if step.scheduled:  # else the end of a fast-forwarded run, already sampled
                record_usage(now)
            start(i, now)
        else:
            # Every request arriving at this instant is queued before an idle instance
            # schedules (a burst's first step sees the whole burst).
            now = next_arrival
            rid = feed.pop()
            i = _route(d, schedulers, k)
            if prefix_group is None or prefix_len is None:
                schedulers[i].add(rid, int(input_len[rid]), int(output_len[rid]))
            else:
                schedulers[i].add(rid, int(input_len[rid]), int(output_len[rid]),
                                  int(prefix_group[rid]), int(prefix_len[rid]))
            k += 1
            if not running[i] and i not in idle:
                idle.append(i)
            if feed.next_s > now:  # requests arriving together start one batch together
                for j in idle:
                    if not running[j]:
                        start(j, now)
                idle.clear()
    assert all(s.free_blocks == s.num_blocks and not s.has_work for s in schedulers)
    metrics = RequestMetrics(feed.arrival, first_sched, first_tok, finish,
                             requests.input_len, requests.output_len, np.frombuffer(itl_v),
                             np.frombuffer(itl_w, dtype=np.uint32))
    return ServeResult(d, capacity, metrics, iterations,
                       sum(s.preemptions for s in schedulers), usage.to_array())
