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
inside one).

The fast-forward applies to every instance without pipeline parallelism (colocated, or either
pool of a disaggregated deployment); a pp > 1 instance is stepped batch by batch (gated off).

Long runs (one colocated instance whose scheduler admits by vLLM V1's rule,
`Scheduler.joins_whole_prompts`; open-loop arrivals, no shared prefixes, no trace): the loop
also steps through arrivals and finishes itself. Each step is the running decodes plus the
queued arrivals admitted whole, in order (while the token budget after one token per decode,
max_num_seqs and the free blocks after the decodes' hold them); its time is `time` of that
batch's sums (`decode_terms` when no one joins), the blocks the decodes fill come from a count
of them by step phase (a decode's block fills when its cached tokens reach a multiple of the
block size), and a request's tokens, blocks and last-token time are written once, when it
finishes or the run ends. The run stops before a step `schedule` would make otherwise (an
arrival to chunk or left waiting, a decode short of a block: preemption), or once the batch is
empty; the plain path takes over from there. Usage is sampled before and after each finish
(the peaks), queue length at each change.

Pipeline parallelism (vLLM V1's batch queue, `EngineCore.step_with_batch_queue`, up to pp
batches in flight): a new batch is scheduled when the host is free, from the requests
not in flight (those of an in-flight batch are not rescheduled, nor preempted, until it
completes); each stage starts when the batch's previous stage and the send between them are
done and the stage itself is free; the batch's tokens are applied when its last stage ends.
The host's per-iteration overhead precedes the batch's first stage; the host then schedules
the next batch (when fewer than pp are in flight) while the stages work.

Disaggregation (prefill pool, KV transfer, decode pool; vLLM's NixlConnector / SGLang's PD
flow): a request is routed to a prefill instance with an output of one token: its first token
is sampled there (TTFT ends there). Its prompt's blocks stay held on the prefill instance
(vLLM's `delay_free_blocks`) while it waits, in its decode instance's FIFO, for that many free
blocks there; they are then allocated and the prompt's KV sent (`placement.kv_transfer_time`,
transfers from one prefill instance one after the other); when it lands the prefill blocks
are freed and the request joins the decode instance's waiting queue with its prompt computed
and one token generated, to be admitted as any request (max_num_seqs, the token budget) and
decoded. Alone: TTFT = its prefill iteration, E2E = TTFT + transfer + the (out - 1) decode
steps."""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import AnyDeployment, Deployment
from meshplan.serve.iteration import IterationCost, KVCapacity, kv_capacity
from meshplan.serve.metrics import RequestMetrics, summary
from meshplan.serve.placement import (
    instance_ranges,
    kv_transfer_bytes,
    kv_transfer_time,
    stage_send_tiers,
    tier_between,
)
from meshplan.serve.schedulers import RequestState, Scheduler, Step, make_scheduler
from meshplan.serve.trace import Tracer
from meshplan.serve.workload import ArrivalFeed, Requests


@dataclass(frozen=True)
class ServeResult:
    """What a simulation measured."""

    deployment: AnyDeployment
    capacity: KVCapacity
    """Of one instance (of a disaggregated deployment: of a decode instance)."""
    metrics: RequestMetrics | None
    """None when the deployment does not fit in memory."""
    iterations: int
    preemptions: int
    kv_usage: np.ndarray
    """(time, used share of the KV blocks), all instances: after each plain iteration, at the
    end of each fast-forwarded run and around each finish inside a long run, halved past a
    bound keeping the larger of neighbours (`Timeline`), so its peak is the run's."""
    pool_capacity: tuple[KVCapacity, ...] = ()
    """Of a disaggregated deployment: (prefill, decode) instances'."""
    kv_transfer_s: np.ndarray | None = None
    """Of a disaggregated deployment: each KV transfer's seconds on the wire."""
    queue_len: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(time, requests waiting to be scheduled), all instances, at each change seen when
    `kv_usage` is sampled (`Timeline`: its peak survives the halving)."""

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.pool_capacity or (self.capacity,))

    @property
    def why_not(self) -> str | None:
        if self.fits:
            return None
        named = zip(("prefill ", "decode "), self.pool_capacity, strict=True) \
            if self.pool_capacity else [("", self.capacity)]
        where, c = next((w, c) for w, c in named if not c.fits)
        return (f"no room for the {where}KV cache: {c.budget_bytes / 2**30:.1f} GiB budget, "
                f"weights {c.weights_bytes / 2**30:.1f} GiB, workspace "
                f"{c.workspace_bytes / 2**30:.1f} GiB, reserved {c.reserved_bytes / 2**30:.1f} "
                "GiB per GPU")

    def to_json(self, slo_ttft_s: float | None = None,
                slo_tpot_s: float | None = None) -> dict[str, Any]:
        m = self.metrics
        memory: dict[str, Any] = self.capacity.to_json()
        if self.pool_capacity:
            memory = {"prefill": self.pool_capacity[0].to_json(),
                      "decode": self.pool_capacity[1].to_json()}
        out: dict[str, Any] = {
            "deployment": self.deployment.to_json(),
            "fits": self.fits, "why_not": self.why_not,
            "num_requests": 0 if m is None else len(m.arrival_s),
            "num_completed": 0 if m is None else int(np.isfinite(m.finish_s).sum()),
            "memory": memory,
            "iterations": self.iterations, "preemptions": self.preemptions,
            "kv_usage_peak": float(self.kv_usage[:, 1].max()) if len(self.kv_usage) else 0.0,
        }
        if self.kv_transfer_s is not None:
            out["kv_transfer_ms"] = {"count": len(self.kv_transfer_s),
                                     **summary(self.kv_transfer_s, 1e3)}
        if m is not None:
            out["metrics"] = m.aggregate(self.deployment.num_gpus, slo_ttft_s, slo_tpot_s)
            out["distributions"] = m.distributions()
        out["timeseries"] = {"kv_usage": thin(self.kv_usage),
                             "queue_length": thin(self.queue_len)}
        return out


SERIES_POINTS = 1000


def thin(series: np.ndarray, points: int = SERIES_POINTS) -> list[list[float]]:
    """At most `points` (time, value) pairs of `series`: the largest value of each run of
    neighbours (peaks survive), with that run's last time."""
    if len(series) <= points:
        return [[float(t), float(v)] for t, v in series]
    edges = np.linspace(0, len(series), points + 1).astype(int)
    return [[float(series[b - 1, 0]), float(series[a:b, 1].max())]
            for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


@dataclass
class _Transfer:
    """A prompt's KV on its way from prefill instance `src` to decode instance `dst`."""

    rid: int
    src: int
    dst: int
    held: int
    """Blocks it keeps on the prefill instance until it lands."""
    blocks: int
    """Blocks it holds on the decode instance."""


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

    def change(self, t: float, v: float) -> None:
        """`add` only when `v` differs from the latest value (a step function: its samples
        are its changes)."""
        if self.last is None or self.last[1] != v:
            self.add(t, v)

    def to_array(self) -> np.ndarray:
        out = np.stack([np.frombuffer(self.t), np.frombuffer(self.v)], axis=1)
        if self.last is not None and (len(out) == 0 or tuple(out[-1]) != self.last):
            out = np.concatenate([out, np.array([self.last])])
        return out.reshape(-1, 2)


def _route(router: str, schedulers: list[Scheduler], k: int) -> int:
    if router == "round-robin" or len(schedulers) == 1:
        return k % len(schedulers)
    if router == "least-requests":
        load = [len(s.requests) for s in schedulers]
    else:
        load = [sum(r.known + r.output - r.generated - r.computed
                    for r in s.requests.values()) for s in schedulers]
    return int(np.argmin(load))


def _schedule_excluding(s: Scheduler, excluded: set[int]) -> Step:
    """`s.schedule()` over the running requests not in `excluded` (in flight), which keep
    their places and count against max_num_seqs."""
    if not excluded:
        return s.schedule()
    full = s.running
    s.running = [rid for rid in full if rid not in excluded]
    limit = s.max_num_seqs
    s.max_num_seqs = limit - (len(full) - len(s.running))
    try:
        step = s.schedule()
    finally:
        s.max_num_seqs = limit
    alive = set(s.running)
    s.running = [rid for rid in full if rid in excluded or rid in alive] + step.admitted
    return step


def _check_fits(d: Deployment, capacity: KVCapacity, longest: int, what: str) -> None:
    room = capacity.blocks_per_rank * d.block_size
    if longest > room:
        raise MeshplanError(f"{what} {longest}: one request alone needs more KV cache than an "
                            f"instance holds ({room} tokens)")


def simulate(d: AnyDeployment, requests: Requests, plain: bool = False,
             trace: str | Path | None = None, tracer: Tracer | None = None) -> ServeResult:
    """Run every request to completion through the deployment. `plain=True`: one iteration
    at a time, each timed by the layer core itself (`IterationCost.time_reference`), every
    inter-token gap and KV-usage sample kept one by one (the reference for the fast path).
    `trace`: write a Perfetto trace there (`meshplan.serve.trace`; `tracer` to set its caps)."""
    disagg = d.disaggregated
    pools = d.pools
    caps = [kv_capacity(p) for p in pools]
    capacity = caps[-1]
    pool_caps = tuple(caps) if disagg else ()
    if not all(c.fits for c in caps):
        return ServeResult(d, capacity, None, 0, 0, np.zeros((0, 2)), pool_caps)
    longest = int((requests.input_len + requests.output_len).max())
    longest_prompt = int(requests.input_len.max())
    if disagg:
        _check_fits(pools[0], caps[0], longest_prompt, "input length")
    _check_fits(pools[-1], caps[-1], longest, "input + output length")
    if d.model.max_seq_len is not None and longest > d.model.max_seq_len:
        raise MeshplanError(f"input + output length {longest}: above {d.model.name}'s "
                            f"max_seq_len ({d.model.max_seq_len})")
    for pool in pools:
        if not pool.enable_chunked_prefill and longest_prompt > pool.max_num_batched_tokens:
            raise MeshplanError(f"max_num_batched_tokens={pool.max_num_batched_tokens}: without "
                                f"chunked prefill it must hold the longest prompt "
                                f"({longest_prompt} tokens), as vLLM requires")
    if trace is not None and tracer is None:
        tracer = Tracer()
    pool_costs = [IterationCost(p) for p in pools]
    placed = instance_ranges(d)
    cluster = d.cluster
    schedulers: list[Scheduler] = []
    cost_of: list[IterationCost] = []
    time_of = []
    pool_of: list[int] = []
    for pi, (pool, c, cost) in enumerate(zip(pools, caps, pool_costs, strict=True)):
        for _ in range(pool.instances):
            schedulers.append(make_scheduler(pool, c))
            cost_of.append(cost)
            time_of.append(cost.time_reference if plain else cost.time)
            pool_of.append(pi)
    ninst = len(schedulers)
    entry = schedulers[:pools[0].instances]
    decoders = schedulers[pools[0].instances:] if disagg else []
    first_decoder = pools[0].instances
    is_prefill = [disagg and pi == 0 for pi in pool_of]
    pp_of = [pools[pi].pp for pi in pool_of]
    send_tiers = [stage_send_tiers(cluster, first, pools[pi].tp, pools[pi].pp)
                  for (first, _, _), pi in zip(placed, pool_of, strict=True)]
    stage_free = [[0.0] * (pp + 1) for pp in pp_of]  # host, then each stage
    inflight: list[set[int]] = [set() for _ in range(ninst)]
    nflight = [0] * ninst
    if tracer is not None:
        for g, ((first, size, pool), pi) in enumerate(zip(placed, pool_of, strict=True)):
            role = ("prefill", "decode")[pi] if disagg else "instance"
            tracer.name_instance(g, f"{role} {g - (first_decoder if pi else 0)} (GPUs "
                                 f"{first}-{first + size - 1}, tp{pool.tp} pp{pool.pp})",
                                 pool.pp, is_prefill[g])
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
    queued = Timeline()
    total_blocks = sum(c.num_blocks * p.instances for c, p in zip(caps, pools, strict=True))
    # (end, instance, sequence number, start, what): a Step ending, None (a pipelined
    # instance's first stage free again) or a _Transfer landing; a heap
    busy: list[tuple[float, int, int, float, Any]] = []
    seq = itertools.count()
    running = [False] * ninst
    iterations = 0
    k = 0
    isnan = math.isnan
    entry_router = pools[0].spec.router
    straddle_ok = len(entry) == 1 or entry_router == "round-robin"
    # the fast-forward: not for pipelined instances, nor for prefill instances (their
    # requests end at their first token, handed off, never in a decode run)
    ff_on = [not plain and pp == 1 and not pre for pp, pre in zip(pp_of, is_prefill,
                                                                  strict=True)]
    # disaggregation: per decode instance the transfers waiting for blocks, per prefill
    # instance when its KV link is next free
    pending: list[deque[tuple[int, int, int]]] = [deque() for _ in range(ninst)]
    inbound = [0] * ninst  # transfers under way to each decode instance
    link_free = [0.0] * ninst
    transfer_s = array("d")
    kv_tier = {(a, b): tier_between(cluster, placed[a][:2], placed[b][:2])
               for a in range(first_decoder) for b in range(first_decoder, ninst)} \
        if disagg else {}
    decode_k = 0

    def record_usage(now: float) -> None:
        usage.add(now, sum(s.used_blocks for s in schedulers) / total_blocks)
        queued.change(now, sum(len(s.waiting) for s in schedulers))

    if ninst == 1:  # the common case, on the hot path: no generator per iteration
        only = schedulers[0]

        def record_usage(now: float) -> None:
            usage.add(now, only.used_blocks / total_blocks)
            queued.change(now, len(only.waiting))

    def push(end: float, i: int, began: float, what: Any) -> None:
        heapq.heappush(busy, (end, i, next(seq), began, what))

    def fast_forward(i: int, now: float) -> tuple[float, bool]:
        """Apply the decode-only steps of instance `i` that nothing can interrupt from `now`;
        return when the last of them ends (`now` when there is none), and whether that last
        step was in progress at the next arrival (the instance's next schedule must then wait
        for the arrival to be queued: the caller posts an empty step ending then)."""
        nonlocal iterations
        s = schedulers[i]
        if not s.fast_forward_ok:
            return now, False
        bs = s.block_size
        run = s.running
        nseq = len(run)
        if nseq == 0 or nseq > s.max_num_batched_tokens or (
                s.waiting and nseq < s.max_num_seqs and s.head_admissible()):
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
        # (a decode instance: an arrival reaches it only through a later prefill, so its step
        # in progress at the arrival may run whatever the routers)
        straddle_here = straddle_ok or pool_of[i] == 1
        other = busy[0][0] if busy else math.inf
        # Step by step (`IterationCost.decode_times`' floats, summed as the heap would):
        # steps ending by the next arrival (completions go first, as the heap orders them)
        # and strictly before another instance's next step ends (its usage sample reads this
        # instance's blocks). The step in progress at the arrival may run too where the
        # router does not read the instances' state.
        base, layers, head, overhead, per_pair, per_q, per_kv = cost_of[i].decode_terms(nseq)
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
            if nxt_end >= other or (nxt_end > nxt and not straddle_here):
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
        if tracer is not None:
            tracer.decode_run(i, ends[:K + 1], nseq, s.used_blocks)
        return eK, straddle


    # Long runs (one colocated instance whose scheduler `joins_whole_prompts`, open-loop
    # arrivals without shared prefixes, no trace): steps whose batch is every running
    # request decoding plus the arrivals admitted whole are applied without a schedule
    # each, through arrivals and finishes, until one the scheduler must decide itself (a
    # prompt to chunk or left waiting, a block short, the batch empty).
    runs_on = (not plain and ninst == 1 and not disagg and not closed and pp_of[0] == 1
               and prefix_group is None and tracer is None
               and schedulers[0].joins_whole_prompts)
    terms_of: dict[int, tuple[float, ...]] = {}

    def long_run(i: int, now: float) -> float:
        """Apply the steps of instance `i` from `now` that `schedule` would make of the
        running decodes and whole admitted arrivals alone, each timed as `start` times it;
        return when the last ends (`now` when there is none)."""
        nonlocal iterations, k
        s = schedulers[i]
        run = s.running
        if s.waiting or not run or busy or s._lru:
            return now
        bs, reqs = s.block_size, s.requests
        hist = [0] * bs  # decoding requests by the step phase (j % bs) their blocks fill at
        # by the step of their last sample, (state, base, gbase, decoding): computed after
        # step j is base + j, generated gbase + j
        fin: dict[int, list[tuple[RequestState, int, int, bool]]] = {}
        members: dict[int, tuple[RequestState, int, int, int]] = {}  # the live ones, with F
        P = 0  # cached tokens of the decoding requests at the step's start
        for rid in run:
            r = reqs[rid]
            c = r.computed
            if r.prompt + r.generated - c != 1 or r.blocks != -(-c // bs) or r.keys:
                return now
            P += c
        for rid in run:  # a decode's blocks fill at step j when c + j - 1 is a multiple of bs
            r = reqs[rid]
            c, g = r.computed, r.generated
            hist[(1 - c) % bs] += 1
            F = r.output - g
            members[rid] = (r, c, g, F)
            fin.setdefault(F, []).append((r, c, g, True))
        nb = len(run)
        mnbt, mseqs = s.max_num_batched_tokens, s.max_num_seqs
        cost, time_i = cost_of[i], time_of[i]
        pending: deque[int] = deque()
        t = now
        j = 0
        qlast = 0
        sampled_at = 0  # the latest step whose end has a usage sample
        while nb or pending:
            jn = j + 1
            if nb > mnbt:
                break
            grow = hist[jn % bs]
            free = s.free_blocks - grow
            if free < 0:
                break
            m = sp = sp2 = 0
            if pending:
                left_budget = mnbt - nb
                for rid in pending:
                    p = int(input_len[rid])
                    need = -(-p // bs)
                    if nb + m >= mseqs or p > left_budget - sp or need > free:
                        break
                    m += 1
                    sp += p
                    sp2 += p * p
                    free -= need
                if m < len(pending):
                    break  # the head waits or is chunked: `schedule` decides
            # step jn is the scheduler's: apply it
            if jn in fin and jn > 1 and sampled_at != j:
                usage.add(t, s.used_blocks / total_blocks)  # the peak before finishes
            s.free_blocks = free
            if m:
                dt = time_i(nb + m, float(nb + sp), float(P), float(nb + sp2),
                            float(P + nb + sp), nb + m)
            else:
                tm = terms_of.get(nb)
                if tm is None:
                    tm = terms_of[nb] = cost.decode_terms(nb)
                base, layers, head, overhead, per_pair, per_q, per_kv = tm
                core = max(per_pair * (P + 0.5 * nb), per_q * nb + per_kv * (P + nb))
                dt = base + layers * core + head + overhead
            end = t + dt
            if jn == 1:
                same = 0
                for r, _, g, _ in members.values():
                    if g == 0:
                        first_tok[r.rid] = end
                    elif r.last_token_s == now:
                        same += 1
                    else:
                        itl_v.append(end - r.last_token_s)
                        itl_w.append(1)
                if same:
                    itl_v.append(end - now)
                    itl_w.append(same)
            elif nb:
                itl_v.append(end - t)
                itl_w.append(nb)
            P += nb
            for _ in range(m):
                rid = pending.popleft()
                p, out = int(input_len[rid]), int(output_len[rid])
                r = s.join(rid, p, out)
                first_sched[rid] = t
                first_tok[rid] = end
                F = jn + out - 1
                members[rid] = (r, p - jn, 1 - jn, F)
                fin.setdefault(F, []).append((r, p - jn, 1 - jn, out > 1))
                if out > 1:
                    hist[(jn + 1 - p) % bs] += 1
                    P += p
                    nb += 1
            done = fin.pop(jn, None)
            if done:
                for r, c, g, decoding in done:
                    r.computed = c + jn
                    r.generated = g + jn
                    r.blocks = -(-r.computed // bs)
                    r.last_token_s = end
                    if decoding:  # (else a one-token request admitted by this step)
                        hist[(1 - c) % bs] -= 1
                        nb -= 1
                        P -= c + jn
                    s.finish(r.rid)
                    finish[r.rid] = end
                    del members[r.rid]
                usage.add(end, s.used_blocks / total_blocks)
                sampled_at = jn
            while feed.next_s < end:
                pending.append(feed.pop())
                k += 1
            if len(pending) != qlast:
                qlast = len(pending)
                queued.change(end, qlast)
            t, j = end, jn
        if j == 0:
            return now
        for r, c, g, _ in members.values():
            r.computed = c + j
            r.generated = g + j
            r.blocks = -(-r.computed // bs)
            r.last_token_s = t
        for rid in pending:
            s.add(rid, int(input_len[rid]), int(output_len[rid]))
        s.advanced(j)
        iterations += j
        record_usage(t)
        return t

    def trace_step(i: int, s: Scheduler, step: Step, stage: int, a: float,
                   b: float) -> None:
        assert tracer is not None
        decode = sum(1 for rid, _ in step.scheduled
                     if s.requests[rid].computed >= s.requests[rid].prompt)
        tracer.iteration(i, stage, a, b, len(step.scheduled) - decode, decode, step.tokens,
                         s.used_blocks)

    def start(i: int, now: float) -> None:
        nonlocal iterations
        s = schedulers[i]
        while ff_on[i]:  # fast-forwarded runs back to back (a finish ends one)
            then = long_run(i, now) if runs_on else now
            deferred = False
            if then == now:
                then, deferred = fast_forward(i, now)
            if pending[i]:
                try_transfers(i, then)
            if deferred:
                running[i] = True
                push(then, i, then, Step([], 0))
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
        t = time_of[i](len(step.scheduled), float(step.tokens), float(step.query_prefix),
                       float(step.query_squares), float(step.kv_tokens), step.sampled)
        running[i] = True
        iterations += 1
        if tracer is not None:
            trace_step(i, s, step, 0, now, now + t)
        heapq.heappush(busy, (now + t, i, next(seq), now, step))

    def start_pp(i: int, now: float) -> None:
        """Schedule a batch on pipelined instance `i` if its host is free and fewer than pp
        batches are in flight; time it stage by stage (slot 0 of `stage_free` is the host,
        whose overhead precedes the first stage and overlaps the stages' work)."""
        nonlocal iterations
        free, pp = stage_free[i], pp_of[i]
        if nflight[i] >= pp or free[0] > now:
            return
        s = schedulers[i]
        step = _schedule_excluding(s, inflight[i])
        if not step.scheduled:
            return
        for rid in step.admitted:
            if isnan(first_sched[rid]):
                first_sched[rid] = now
        cost = cost_of[i]
        stages = cost.stage_times(len(step.scheduled), float(step.tokens),
                                  float(step.query_prefix), float(step.query_squares),
                                  float(step.kv_tokens), step.sampled, plain)
        # each stage's launches hide behind that stage's own GPU work, not the pipeline's
        end = free[0] = now + cost.step_overhead(len(step.scheduled), step.tokens, max(stages))
        for st in range(pp):
            ready = end if st == 0 else end + cost.send_time(step.tokens, send_tiers[i][st - 1])
            begin = max(ready, free[st + 1])
            end = free[st + 1] = begin + stages[st]
            if tracer is not None:
                trace_step(i, s, step, st, begin, end)
        iterations += 1
        nflight[i] += 1
        inflight[i].update(rid for rid, _ in step.scheduled)
        push(end, i, now, step)
        if nflight[i] < pp:
            push(free[0], i, free[0], None)

    starter = [start_pp if pp > 1 else start for pp in pp_of]

    def hand_off(i: int, done: list[int], now: float) -> None:
        """Prefilled requests of prefill instance `i`: finished if one token was all they
        asked for, else their blocks held and their KV queued for a decode instance."""
        nonlocal decode_k
        s = schedulers[i]
        for rid in done:
            if int(output_len[rid]) <= 1:
                finish[rid] = now
                if closed:
                    feed.finished(rid, now)
                continue
            held = -(-int(input_len[rid]) // s.block_size)
            s.free_blocks -= held
            j = first_decoder + _route(pools[1].spec.router, decoders, decode_k)
            decode_k += 1
            pending[j].append((rid, i, held))
            try_transfers(j, now)

    def try_transfers(j: int, now: float) -> None:
        """Start the transfers to decode instance `j` that its free blocks admit, in order."""
        q, s = pending[j], schedulers[j]
        while q:
            rid, src, held = q[0]
            prompt = int(input_len[rid])
            need = -(-prompt // s.block_size)
            # Requests preempted on the decode instance go first (vLLM puts them at the
            # front of its queue), and a transfer starts only for a request the instance
            # can run on landing: no landed request waits holding blocks another needs.
            if s.waiting or need > s.free_blocks \
                    or len(s.running) + inbound[j] >= s.max_num_seqs \
                    or not s.accept(prompt, int(output_len[rid])):
                return
            q.popleft()
            s.free_blocks -= need
            inbound[j] += 1
            nbytes = kv_transfer_bytes(pools[0], pools[1], prompt)
            dur = kv_transfer_time(cluster, kv_tier[src, j], nbytes)
            begin = max(now, link_free[src])
            link_free[src] = begin + dur
            transfer_s.append(dur)
            if tracer is not None:
                tracer.transfer(src, pools[0].pp, rid, j, begin, begin + dur, nbytes)
            push(begin + dur, j, begin, _Transfer(rid, src, j, held, need))

    def land(x: _Transfer, now: float) -> None:
        """A prompt's KV arrived: free it on the prefill side, queue it for decoding."""
        schedulers[x.src].free_blocks += x.held
        if not running[x.src]:
            starter[x.src](x.src, now)
        s = schedulers[x.dst]
        inbound[x.dst] -= 1
        s.receive(x.rid, int(input_len[x.rid]), int(output_len[x.rid]), x.blocks)
        s.requests[x.rid].last_token_s = first_tok[x.rid]
        record_usage(now)
        if not running[x.dst]:
            starter[x.dst](x.dst, now)

    idle: list[int] = []  # instances given a request at `now`, started once all are in
    while feed.next_s != math.inf or busy:
        next_arrival = feed.next_s
        if busy and busy[0][0] <= next_arrival:
            now, i, _, began, step = heapq.heappop(busy)
            if step.__class__ is not Step:
                if step is None:
                    start_pp(i, now)
                else:
                    land(step, now)
                continue
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
            if is_prefill[i]:
                hand_off(i, done, now)
            else:
                for rid in done:
                    finish[rid] = now
                    if closed:
                        feed.finished(rid, now)
            if step.scheduled:  # else the end of a fast-forwarded run, already sampled
                record_usage(now)
            if pending[i]:
                try_transfers(i, now)
            if nflight[i]:
                nflight[i] -= 1
                inflight[i].difference_update(rid for rid, _ in step.scheduled)
            starter[i](i, now)
        else:
            # Every request arriving at this instant is queued before an idle instance
            # schedules (a burst's first step sees the whole burst).
            now = next_arrival
            rid = feed.pop()
            i = _route(entry_router, entry, k)
            out_len = 1 if disagg else int(output_len[rid])
            if prefix_group is None or prefix_len is None:
                schedulers[i].add(rid, int(input_len[rid]), out_len)
            else:
                schedulers[i].add(rid, int(input_len[rid]), out_len,
                                  int(prefix_group[rid]), int(prefix_len[rid]))
            k += 1
            if not running[i] and i not in idle:
                idle.append(i)
            if feed.next_s > now:  # requests arriving together start one batch together
                for j in idle:
                    if not running[j]:
                        starter[j](j, now)
                idle.clear()
    assert all(s.free_blocks == s.num_blocks and not s.has_work for s in schedulers)
    assert not any(pending)
    metrics = RequestMetrics(feed.arrival, first_sched, first_tok, finish,
                             requests.input_len, requests.output_len, np.frombuffer(itl_v),
                             np.frombuffer(itl_w, dtype=np.uint32))
    if trace is not None:
        assert tracer is not None
        tracer.write(trace, feed.arrival, first_tok, finish, ninst)
    return ServeResult(d, capacity, metrics, iterations,
                       sum(s.preemptions for s in schedulers), usage.to_array(), pool_caps,
                       np.frombuffer(transfer_s) if disagg else None,
                       queue_len=queued.to_array())
