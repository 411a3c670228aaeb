"""SGLang's scheduler, one instance: prefill batches and decode batches run separately.

Mirrors `sglang/srt/managers/scheduler.py` (`get_next_batch_to_run`, `get_new_batch_prefill`,
`update_running_batch`) and `schedule_policy.py` (`PrefillAdder`), with the default
`schedule_policy="fcfs"` and no mixed chunks (`enable_mixed_chunk=False`):

* each iteration first tries a prefill batch: the chunked request in progress (its next
  chunk), then waiting requests in order while the running batch has room
  (`max_running_requests`), the chunk budget `chunked_prefill_size` and
  `max_prefill_tokens` allow, and their prompt plus min(output left, 4096) fits in the free
  KV tokens less the reservation of the running requests (each one's min(output left, 4096)
  x `new_token_ratio`); a prompt longer than the chunk budget left is cut there (page
  aligned) and continues alone in the next prefill batches;
* without a prefill batch, every running request decodes one token. When the pool cannot
  hold those tokens, decoding requests are retracted (`ScheduleBatch.retract_decode`: fewest
  output tokens first, then the longest prompt; KV freed, recomputed later, back to the
  waiting queue's end) until the rest have `SGLANG_RETRACT_DECODE_STEPS` tokens of room
  each, and `new_token_ratio` is reset to (decoded + steps x batch) / (sum of outputs);
  otherwise it decays by (init - min) / `SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS` per decode
  batch down to init x `SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR` (`sglang/srt/environ.py`).

The radix cache (on unless `disable_radix_cache`) is the base pool's prefix cache at
`page_size` granularity, inserted after the forward (`cache_unfinished_req`).
"""

from __future__ import annotations

from meshplan.serve.schedulers.base import RequestState, Scheduler, Step


class SGLangScheduler(Scheduler):
    """`running` holds the decoding requests; the chunked request waits apart."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool, prefix_caching: bool,
                 max_prefill_tokens: int, init_new_token_ratio: float,
                 min_new_token_ratio_factor: float, new_token_ratio_decay_steps: int,
                 clip_max_new_tokens: int, retract_decode_steps: int):
        super().__init__(num_blocks, block_size, max_num_seqs, max_num_batched_tokens,
                         chunked_prefill, prefix_caching, cache_at_schedule=False)
        self.max_prefill_tokens = max_prefill_tokens
        self.init_ratio = min(init_new_token_ratio, 1.0)
        self.min_ratio = min(self.init_ratio * min_new_token_ratio_factor, 1.0)
        self.decay = (self.init_ratio - self.min_ratio) / new_token_ratio_decay_steps
        self.new_token_ratio = self.init_ratio
        self.clip = clip_max_new_tokens
        self.retract_steps = retract_decode_steps
        self.chunked: int | None = None
        self._prefilling: list[int] = []

    @property
    def fast_forward_ok(self) -> bool:  # type: ignore[override]
        return self.chunked is None

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.chunked is not None)

    def advanced(self, steps: int) -> None:
        self.new_token_ratio = max(self.new_token_ratio - steps * self.decay, self.min_ratio)

    def schedule(self) -> Step:
        step = self._prefill_batch()
        return step if step is not None else self._decode_batch()

    def _left(self, r: RequestState) -> int:
        return min(max(r.output - r.generated, 0), self.clip)

    def _prefill_batch(self) -> Step | None:
        full = len(self.running) >= self.max_num_seqs
        if (full or not self.waiting) and self.chunked is None:
            return None
        bs, requests = self.block_size, self.requests
        ratio = self.new_token_ratio
        rem_total = self.free_blocks * bs - sum(self._left(requests[rid]) * ratio
                                                for rid in self.running)
        rem_chunk = self.max_num_batched_tokens if self.chunked_prefill else None
        rem_input = self.max_prefill_tokens
        scheduled: list[tuple[int, int]] = []
        admitted: list[int] = []
        if self.chunked is not None:
            r = requests[self.chunked]
            n = r.known - r.computed
            if rem_chunk is not None and n > rem_chunk:
                n = rem_chunk // bs * bs
            else:
                self.chunked = None  # its last chunk
            ok = self._grow(r, n)
            assert ok, "a chunk's blocks were reserved at admission"
            scheduled.append((r.rid, n))
            rem_total -= n
            rem_input -= n
            if rem_chunk is not None:
                rem_chunk -= n
            if self.chunked is not None:
                return self._prefill_step(scheduled, admitted)
        allocatable = self.max_num_seqs - len(self.running)
        while self.waiting and len(scheduled) < allocatable:
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break
            rid = self.waiting[0]
            r = requests[rid]
            self._match_prefix(r)
            extend = r.known - r.computed
            alone = not scheduled and not self.running  # it fits alone (the loop checks)
            if extend + self._left(r) >= rem_total and not alone:
                self._unmatch(r)
                break
            n = extend
            if rem_chunk is not None and extend > rem_chunk:
                n = rem_chunk // bs * bs
                if n <= 0:
                    self._unmatch(r)
                    break
            elif rem_chunk is None and extend > rem_input and scheduled:
                self._unmatch(r)
                break
            if not self._grow(r, n):
                self._unmatch(r)
                break
            self.waiting.popleft()
            admitted.append(rid)
            scheduled.append((rid, n))
            rem_input -= n
            if rem_chunk is not None:
                rem_chunk -= n
            if n < extend:
                self.chunked = rid
                rem_total -= n
                break
            rem_total -= n + self._left(r)
        if not scheduled:
            return None
        return self._prefill_step(scheduled, admitted)

    def _prefill_step(self, scheduled: list[tuple[int, int]], admitted: list[int]) -> Step:
        self._prefilling = [rid for rid, _ in scheduled]
        return self._step(scheduled, 0, admitted)

    def _decode_batch(self) -> Step:
        self._prefilling = []
        running, requests = self.running, self.requests
        if not running:
            return self._step([], 0, [])
        bs = self.block_size
        need = sum(-(-(requests[rid].computed + 1) // bs) - requests[rid].blocks
                   for rid in running)
        preempted = 0
        if need > self.free_blocks:
            order = sorted(running, key=lambda rid: (requests[rid].generated,
                                                     -requests[rid].prompt), reverse=True)
            while len(order) > 1 and (preempted == 0 or self.free_blocks * bs
                                      < len(order) * self.retract_steps):
                self._preempt(order.pop(), front=False)
                preempted += 1
            decoded = sum(requests[rid].generated for rid in running)
            outputs = sum(requests[rid].output for rid in running)
            self.new_token_ratio = min(1.0, (decoded + self.retract_steps * len(running))
                                       / outputs)
        else:
            self.advanced(1)
        scheduled = []
        for rid in running:
            ok = self._grow(requests[rid], 1)
            assert ok, "one request alone fits in the pool (the loop checks it)"
            scheduled.append((rid, 1))
        return self._step(scheduled, preempted, [])

    def complete(self, step: Step) -> tuple[list[RequestState], list[int]]:
        sampled, done = self._apply(step)
        for rid in self._prefilling:  # finished prefills join the running batch
            if rid != self.chunked:
                self.running.append(rid)
        self._prefilling = []
        for rid in done:
            self.finish(rid)
        return sampled, done
