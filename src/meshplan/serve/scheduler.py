"""vLLM V1's scheduler, one instance: one token budget per step shared by running requests
(decodes and unfinished prefill chunks, first) and waiting ones (admitted in arrival order),
paged KV blocks, and preemption by recompute when blocks run out.

Mirrors `vllm/v1/core/sched/scheduler.py` (`Scheduler.schedule`): running requests are served
first, each with min(tokens it still needs, the budget left); when its new KV slots cannot be
allocated, the last running request is preempted (its blocks freed, its tokens to be recomputed,
back to the front of the waiting queue) until they can, or the request itself is preempted;
waiting requests are admitted only in a step without preemption, while the budget, the
`max_num_seqs` limit and the free blocks allow, a prompt longer than the budget being chunked
(or, without chunked prefill, waiting for a step whose budget holds it whole).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RequestState:
    """What the scheduler tracks of one request."""

    prompt: int
    output: int
    computed: int = 0
    """Tokens whose KV is in the cache."""
    generated: int = 0
    blocks: int = 0
    rid: int = -1
    last_token_s: float = 0.0
    """When its latest output token came (the event loop's)."""

    @property
    def known(self) -> int:
        """Prompt plus generated tokens: what must be in the cache before the next sample."""
        return self.prompt + self.generated


@dataclass
class Step:
    """One scheduled iteration: (request, new tokens) pairs and what it cost the queue."""

    scheduled: list[tuple[int, int]]
    preempted: int
    admitted: list[int] = field(default_factory=list)
    """Requests moved from waiting to running by this step (the first schedule of each is
    among them)."""
    tokens: int = 0
    query_prefix: int = 0
    query_squares: int = 0
    kv_tokens: int = 0
    sampled: int = 0
    """The batch's sums (`BatchShape.from_sums`) and the requests that sample a token."""


@dataclass
class VLLMScheduler:
    """The queues, the block pool and the knobs of one vLLM instance."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    requests: dict[int, RequestState] = field(default_factory=dict)
    waiting: deque[int] = field(default_factory=deque)
    running: list[int] = field(default_factory=list)
    free_blocks: int = -1
    preemptions: int = 0

    def __post_init__(self) -> None:
        self.free_blocks = self.num_blocks

    def add(self, rid: int, prompt: int, output: int) -> None:
        self.requests[rid] = RequestState(prompt, output, rid=rid)
        self.waiting.append(rid)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _grow(self, r: RequestState, new_tokens: int) -> bool:
        need = -(-(r.computed + new_tokens) // self.block_size) - r.blocks  # ceil
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        r.blocks += need
        return True

    def _preempt(self, rid: int) -> None:
        r = self.requests[rid]
        self.free_blocks += r.blocks
        r.blocks, r.computed = 0, 0
        self.running.remove(rid)
        self.waiting.appendleft(rid)
        self.preemptions += 1

    def schedule(self) -> Step:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[int, int]] = []
        preempted = 0
        admitted: list[int] = []
        i = 0
        running, requests = self.running, self.requests
        while i < len(running) and budget > 0:
            rid = running[i]
            r = requests[rid]
            n = min(r.prompt + r.generated - r.computed, budget)
            while not self._grow(r, n):
                victim = running[-1]
                self._preempt(victim)
                preempted += 1
                if victim == rid:
                    n = 0
                    break
            if n == 0:
                if rid not in running:
                    break  # it preempted itself: nothing later in the list is left
                i += 1
                continue
            scheduled.append((rid, n))
            budget -= n
            i += 1
        if preempted == 0:
            while self.waiting and budget > 0 and len(running) < self.max_num_seqs:
                rid = self.waiting[0]
                r = requests[rid]
                n = r.known - r.computed
                if not self.chunked_prefill and n > budget:
                    break
                n = min(n, budget)
                if not self._grow(r, n):
                    break
                self.waiting.popleft()
                running.append(rid)
                admitted.append(rid)
                scheduled.append((rid, n))
                budget -= n
        return self._step(scheduled, preempted, admitted)

    def _step(self, scheduled: list[tuple[int, int]], preempted: int,
              admitted: list[int]) -> Step:
        """The Step of `scheduled` with the batch's sums (before its tokens are applied)."""
        tokens = query_prefix = query_squares = kv_tokens = sampled = 0
        for rid, n in scheduled:
            r = self.requests[rid]
            tokens += n
            query_prefix += n * r.computed
            query_squares += n * n
            kv_tokens += r.computed + n
            sampled += r.computed + n >= r.known
        return Step(scheduled, preempted, admitted, tokens, query_prefix, query_squares,
                    kv_tokens, sampled)

    def complete(self, step: Step) -> tuple[list[RequestState], list[int]]:
        """Apply a finished iteration: (requests that sampled a token, requests that ended)."""
        sampled, done = [], []
        requests = self.requests
        for rid, n in step.scheduled:
            r = requests[rid]
            r.computed += n
            if r.computed >= r.prompt + r.generated:
                r.generated += 1
                sampled.append(r)
                if r.generated >= r.output:
                    done.append(rid)
        for rid in done:
            r = self.requests.pop(rid)
            self.free_blocks += r.blocks
            self.running.remove(rid)
        return sampled, done

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks
