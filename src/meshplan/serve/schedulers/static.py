"""Static batching (FasterTransformer, TensorRT-LLM's `gptSessionBenchmark`): a batch is formed
from the queue only when the engine is idle, its prompts are prefilled together in one
iteration, and it decodes until every member has ended; no request joins mid-batch.

A batch takes waiting requests in arrival order, up to `max_num_seqs` (the benchmark's
batch size), while the KV blocks of their whole prompts and outputs fit (allocated at once,
as the session preallocates its cache). A member that has ended keeps its slot: it is still
computed (padding, the batch's shape is fixed) until the longest member ends, and its blocks
return with the batch's.
"""

from __future__ import annotations

from meshplan.serve.schedulers.base import RequestState, Scheduler, Step


class StaticScheduler(Scheduler):
    """`running` holds the current batch, ended members included."""

    def schedule(self) -> Step:
        requests, running = self.requests, self.running
        if running:
            return self._step([(rid, 1) for rid in running], 0, [])
        while self.waiting and len(running) < self.max_num_seqs:
            r = requests[self.waiting[0]]
            whole = self._blocks_for(r.prompt + r.output)
            if whole > self.free_blocks:
                break
            self.free_blocks -= whole
            r.blocks = whole
            running.append(self.waiting.popleft())
        return self._step([(rid, requests[rid].prompt) for rid in running], 0, list(running))

    def _step(self, scheduled: list[tuple[int, int]], preempted: int,
              admitted: list[int]) -> Step:
        step = super()._step(scheduled, preempted, admitted)
        step.sampled = len(scheduled)  # padding members sample too
        return step

    def complete(self, step: Step) -> tuple[list[RequestState], list[int]]:
        sampled: list[RequestState] = []
        done: list[int] = []
        requests = self.requests
        for rid, n in step.scheduled:
            r = requests[rid]
            r.computed += n
            if r.generated < r.output:
                r.generated += 1
                sampled.append(r)
                if r.generated == r.output:
                    done.append(rid)
        if all(requests[rid].generated >= requests[rid].output for rid in self.running):
            for rid in self.running:
                self._release(requests.pop(rid))
            self.running = []
        return sampled, done
