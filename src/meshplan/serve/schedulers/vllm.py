"""vLLM V1's scheduler, one instance: one token budget per step shared by running requests
(decodes and unfinished prefill chunks, first) and waiting ones (admitted in arrival order),
paged KV blocks, and preemption by recompute when blocks run out.

Mirrors `vllm/v1/core/sched/scheduler.py` (`Scheduler.schedule`): running requests are served
first, each with min(tokens it still needs, the budget left); when its new KV slots cannot be
allocated, the last running request is preempted (its blocks freed, its tokens to be recomputed,
back to the front of the waiting queue) until they can, or the request itself is preempted;
waiting requests are admitted only in a step without preemption, while the budget, the
`max_num_seqs` limit and the free blocks allow, a prompt longer than the budget being chunked
(or, without chunked prefill, waiting for a step whose budget holds it whole). With prefix
caching a request being admitted first takes its cached prefix blocks
(`KVCacheManager.get_computed_blocks`) and is scheduled for the rest of its prompt only.
"""

from __future__ import annotations

from meshplan.serve.schedulers.base import Scheduler, Step


class VLLMScheduler(Scheduler):
    """The queues, the block pool and the knobs of one vLLM instance."""

    fast_forward_ok = True
    joins_whole_prompts = True

    def schedule(self) -> Step:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[int, int]] = []
        preempted = 0
        admitted: list[int] = []
        i = 0
        running, requests, bs = self.running, self.requests, self.block_size
        while i < len(running) and budget > 0:
            rid = running[i]
            r = requests[rid]
            n = r.prompt + r.generated - r.computed
            if n > budget:
                n = budget
            # (most decodes fit in the blocks they hold: no allocation, no prefix to cache)
            if r.group >= 0 or r.computed + n > r.blocks * bs:
                made = self._make_room(r, n)
                if made:
                    preempted += made
                    if rid not in running:
                        break  # it preempted itself: nothing later in the list is left
            if n == 0:
                i += 1
                continue
            scheduled.append((rid, n))
            budget -= n
            i += 1
        if preempted == 0:
            caching = self.prefix_caching
            while self.waiting and budget > 0 and len(running) < self.max_num_seqs:
                rid = self.waiting[0]
                r = requests[rid]
                if caching:
                    self._match_prefix(r)
                n = r.known - r.computed
                if not self.chunked_prefill and n > budget:
                    self._unmatch(r)
                    break
                n = min(n, budget)
                if not self._grow(r, n):
                    self._unmatch(r)
                    break
                self.waiting.popleft()
                running.append(rid)
                admitted.append(rid)
                scheduled.append((rid, n))
                budget -= n
        return self._step(scheduled, preempted, admitted)
