"""vLLM V0's default scheduler (vLLM before 0.8, chunked prefill off), one instance: an
iteration runs either new prompts or one decode token of every running request, never both.

Mirrors `vllm/core/scheduler.py` of 0.6 (`Scheduler._schedule_default`): waiting requests are
prefilled first, in arrival order, each whole, while the step's token budget
(`max_num_batched_tokens`), `max_num_seqs` (the running requests counted) and the free KV
blocks allow, a prompt being admitted only if its blocks leave the 1 % watermark free
(`BlockSpaceManager.can_allocate`, `watermark=0.01`); only when no prompt was scheduled do the
running requests decode, the last one preempted by recompute (blocks freed, back to the front
of the waiting queue) whenever a request's next slot finds no free block. With multi-step
scheduling (`--num-scheduler-steps N`, `vllm/engine/multi_step` of 0.6) a decode batch runs N
steps before the scheduler looks at the waiting queue again.
"""

from __future__ import annotations

from meshplan.serve.schedulers.base import Scheduler, Step

WATERMARK = 0.01
"""Share of the KV blocks a new prompt must leave free (vLLM V0 `CacheConfig` default)."""


class VLLMV0Scheduler(Scheduler):
    """Prefill-first iterations of vLLM V0."""

    fast_forward_ok = True
    """A V0 decode step is V1's (every running request, one token each): the loop's fast
    path applies where no prompt can be admitted."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool = False,
                 prefix_caching: bool = False, decode_steps: int = 1):
        super().__init__(num_blocks, block_size, max_num_seqs, max_num_batched_tokens,
                         chunked_prefill, prefix_caching)
        self.decode_steps = decode_steps
        self._group_left = 0
        """Decode steps left in the current multi-step group."""

    def advanced(self, steps: int) -> None:
        # the loop's decode-only steps cross group boundaries, each starting a new group of
        # `decode_steps` (nothing could be admitted there), so the phase wraps: an arrival
        # waits for the group in progress to end, as in vLLM 0.6's multi-step engine
        self._group_left = (self._group_left - steps) % self.decode_steps

    def schedule(self) -> Step:
        if self._group_left > 0 and self.running:
            self._group_left -= 1
            return self._decode()
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[int, int]] = []
        admitted: list[int] = []
        running, requests = self.running, self.requests
        # (alone on the instance a prompt may use the watermark: V0 would reject it for good)
        reserve = int(WATERMARK * self.num_blocks) if running else 0
        while self.waiting and len(running) < self.max_num_seqs:
            rid = self.waiting[0]
            r = requests[rid]
            if self.prefix_caching:
                self._match_prefix(r)
            n = r.known - r.computed
            need = -(-(r.computed + n) // self.block_size) - r.blocks
            if n > budget or need > self.free_blocks - reserve or not self._grow(r, n):
                self._unmatch(r)
                break
            self.waiting.popleft()
            running.append(rid)
            admitted.append(rid)
            scheduled.append((rid, n))
            budget -= n
        if scheduled:
            return self._step(scheduled, 0, admitted)
        self._group_left = self.decode_steps - 1
        return self._decode()

    def _decode(self) -> Step:
        """One token for every running request, preempting from the back for blocks."""
        running, requests = self.running, self.requests
        scheduled: list[tuple[int, int]] = []
        preempted = 0
        i = 0
        while i < len(running):
            rid = running[i]
            r = requests[rid]
            n = r.known - r.computed
            made = self._make_room(r, n)
            if made:
                preempted += made
                if rid not in running:
                    break  # it preempted itself, the last of the list
            scheduled.append((rid, n))
            i += 1
        return self._step(scheduled, preempted, [])
