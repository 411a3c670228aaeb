"""TensorRT-LLM's in-flight batching, one instance (PyTorch backend, `trtllm-serve` defaults).

Two passes per iteration, as `tensorrt_llm/_torch/pyexecutor/scheduler.py` and the C++
`batch_manager` (`CapacityScheduler`, `MicroBatchScheduler`):

* capacity, policy GUARANTEED_NO_EVICT (`SchedulerConfig.capacity_scheduler_policy`'s
  default): a waiting request is admitted, in arrival order, only if the KV blocks of its
  whole prompt plus output fit in the blocks not already promised to the admitted requests'
  own prompts and outputs, and fewer than `max_batch_size` requests are in flight; the first
  that does not fit stops admission. Nothing is ever evicted, so there is no preemption;
* micro-batch: every generating request takes one token, then context requests (oldest first)
  take their prompt while `max_num_tokens` allows: whole, or with chunked context
  (`enable_chunked_prefill`, off by default) cut to the budget left in multiples of
  `tokens_per_block` (the chunk unit); without chunking a prompt that does not fit waits.

Block reuse across requests (`KvCacheConfig.enable_block_reuse`) is not modelled.
"""

from __future__ import annotations

from meshplan.serve.schedulers.base import RequestState, Scheduler, Step


class TRTLLMScheduler(Scheduler):
    """`running` holds the admitted requests, in context or generation phase."""

    fast_forward_ok = True

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool):
        super().__init__(num_blocks, block_size, max_num_seqs, max_num_batched_tokens,
                         chunked_prefill)
        self.promised = 0
        """Blocks of the admitted requests' prompts and outputs, whole."""

    def _whole(self, r: RequestState) -> int:
        return self._blocks_for(r.prompt + r.output)

    def schedule(self) -> Step:
        requests, running = self.requests, self.running
        while self.waiting and len(running) < self.max_num_seqs:
            r = requests[self.waiting[0]]
            whole = self._whole(r)
            if self.promised + whole > self.num_blocks:
                break
            self.promised += whole
            running.append(self.waiting.popleft())
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[int, int]] = []
        contexts: list[RequestState] = []
        for rid in running:
            r = requests[rid]
            if r.prompt + r.generated - r.computed == 1 and r.generated:
                if budget == 0:
                    break
                scheduled.append((rid, 1))
                budget -= 1
            else:
                contexts.append(r)
        admitted = []
        for r in contexts:
            if budget <= 0:
                break
            n = r.known - r.computed
            if n > budget:
                if not self.chunked_prefill:
                    break
                n = budget // self.block_size * self.block_size
                if n == 0:
                    break
            if r.computed == 0:
                admitted.append(r.rid)
            scheduled.append((r.rid, n))
            budget -= n
        for rid, n in scheduled:
            ok = self._grow(requests[rid], n)
            assert ok, "GUARANTEED_NO_EVICT promised these blocks"
        return self._step(scheduled, 0, admitted)

    def head_admissible(self) -> bool:
        """GUARANTEED_NO_EVICT admits the head only into blocks not promised; promises fall
        only when a request finishes, which ends a fast-forwarded run."""
        return self.promised + self._whole(self.requests[self.waiting[0]]) <= self.num_blocks

    def accept(self, prompt: int, output: int) -> bool:
        """GUARANTEED_NO_EVICT: a transferred request is promised its whole length too."""
        whole = self._blocks_for(prompt + output)
        if self.promised + whole > self.num_blocks:
            return False
        self.promised += whole
        return True

    def finish(self, rid: int) -> None:
        self.promised -= self._whole(self.requests[rid])
        super().finish(rid)
