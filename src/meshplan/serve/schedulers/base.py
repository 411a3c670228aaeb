"""What every scheduler shares: the request state, the scheduled step, the queues and the
paged KV block pool with its prefix cache.

The pool counts blocks, not their ids: `free_blocks` are those no running request holds,
cached-but-unreferenced prefix blocks among them (vLLM's free queue holds its cached blocks
too, `vllm/v1/core/block_pool.py`; SGLang's radix tree keeps unlocked nodes evictable,
`mem_cache/radix_cache.py`). A shared-prefix block is keyed by (prefix group, block index):
requests of one group reference it once while any of them holds it, and once the last
releases it the block stays cached until allocation evicts it, least recently released
first (both engines' LRU default). Hits are block aligned and never cover the prompt's last
token (vLLM recomputes it to sample; SGLang caps the match at input length - 1).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestState:
    """What the scheduler tracks of one request."""

    prompt: int
    output: int
    computed: int = 0
    """Tokens whose KV is in the cache."""
    generated: int = 0
    blocks: int = 0
    """Blocks it holds, the shared prefix blocks in `keys` among them."""
    rid: int = -1
    last_token_s: float = 0.0
    """When its latest output token came (the event loop's)."""
    group: int = -1
    """Prefix group (-1: none) whose first `prefix` prompt tokens it shares."""
    prefix: int = 0
    keys: list[tuple[int, int]] = field(default_factory=list)
    """The cached prefix blocks it references."""
    cached_upto: int = 0
    """Prefix blocks [0, cached_upto) already looked up or registered."""

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


class Scheduler:
    """Queues, block pool and prefix cache of one instance; subclasses write `schedule`.

    The event loop uses `add`, `schedule`, `complete`, `has_work`, `used_blocks`,
    `preemptions`, and on its fast-forward path (where `fast_forward_ok`) `requests`,
    `running`, `waiting`, `free_blocks`, `max_num_seqs`, `max_num_batched_tokens`, `finish`
    and `advanced`."""

    fast_forward_ok = False
    """Whether the loop may apply a run of decode-only steps over the whole running set at
    once: true where `schedule` would return exactly those steps (no waiting request it
    could admit, every running request decoding, enough free blocks)."""

    joins_whole_prompts = False
    """Whether, with every running request decoding and nothing preempted, `schedule`
    admits the waiting requests in arrival order, each whole while its prompt fits in the
    token budget left by one token per decode, in the free blocks left after the decodes'
    and in max_num_seqs (vLLM V1's rule): then the loop may also fast-forward through
    arrivals and finishes (`loop.simulate`'s long runs), admitting requests itself with
    `join`."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool,
                 prefix_caching: bool = False, cache_at_schedule: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.prefix_caching = prefix_caching
        self.cache_at_schedule = cache_at_schedule
        """vLLM hashes a full block when it is allocated for the step that computes it
        (`KVCacheManager.allocate_slots` -> `cache_blocks`), so a request later in the
        same step can hit it; SGLang inserts into the radix tree after the forward."""
        self.requests: dict[int, RequestState] = {}
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.free_blocks = num_blocks
        self.preemptions = 0
        self.swap = False
        """Preemption by swapping: the KV goes to host memory and comes back, nothing is
        recomputed (the transfer is not timed yet)."""
        self._refs: dict[tuple[int, int], int] = {}
        self._lru: OrderedDict[tuple[int, int], None] = OrderedDict()

    # -- queue -------------------------------------------------------------------------

    def add(self, rid: int, prompt: int, output: int, group: int = -1,
            prefix: int = 0) -> None:
        self.requests[rid] = RequestState(prompt, output, rid=rid, group=group,
                                          prefix=prefix)
        self.waiting.append(rid)

    def join(self, rid: int, prompt: int, output: int) -> RequestState:
        """A fresh request admitted whole by the loop's fast path (`joins_whole_prompts`): it
        runs, holding its prompt's blocks (taken from `free_blocks` by the caller)."""
        r = self.requests[rid] = RequestState(prompt, output, rid=rid,
                                              blocks=-(-prompt // self.block_size))
        self.running.append(rid)
        return r

    def accept(self, prompt: int, output: int) -> bool:
        """Whether the instance takes a request prefilled elsewhere now (disaggregation),
        reserving what its engine reserves at admission; its blocks are the caller's."""
        return True

    def receive(self, rid: int, prompt: int, output: int, blocks: int) -> None:
        """A request whose prompt KV arrived from a prefill instance (accepted, its `blocks`
        allocated when the transfer began, as vLLM's scheduler allocates a remote request's
        blocks before loading them): it runs from its first token on."""
        self.requests[rid] = RequestState(prompt, output, computed=prompt, generated=1,
                                          blocks=blocks, rid=rid)
        self.running.append(rid)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        """Prefix blocks in the cache, referenced or not."""
        return len(self._refs) + len(self._lru)

    def schedule(self) -> Step:
        raise NotImplementedError

    def advanced(self, steps: int) -> None:
        """The loop applied `steps` decode-only steps itself (the fast path)."""

    def head_admissible(self) -> bool:
        """Whether `schedule` could admit the first waiting request now, given there is one
        and fewer than max_num_seqs run (the fast path stops where it could). Default: yes;
        a scheduler whose admission also waits on something a decode run cannot change (a
        finish) says no then, and the loop may fast-forward with requests waiting."""
        return True

    # -- blocks ------------------------------------------------------------------------

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _trim(self) -> None:
        """Evict unreferenced cached blocks beyond the free count (the allocations since
        took them, least recently released first)."""
        lru = self._lru
        while len(lru) > self.free_blocks:
            lru.popitem(last=False)

    def _grow(self, r: RequestState, new_tokens: int) -> bool:
        """Allocate the blocks `new_tokens` more computed tokens need; False if too few."""
        need = -(-(r.computed + new_tokens) // self.block_size) - r.blocks
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        r.blocks += need
        if self._lru and len(self._lru) > self.free_blocks:
            self._trim()
        if self.cache_at_schedule and r.group >= 0:
            self._cache_prefix(r, r.computed + new_tokens)
        return True

    def _release(self, r: RequestState) -> None:
        """Give back a request's blocks: its own to the free pool, its shared prefix blocks
        to the cache's evictable list once no request references them."""
        self.free_blocks += r.blocks - len(r.keys)
        refs, lru = self._refs, self._lru
        for key in r.keys:
            left = refs[key] - 1
            if left:
                refs[key] = left
            else:
                del refs[key]
                lru[key] = None
                self.free_blocks += 1
        r.keys = []
        r.blocks = 0
        r.cached_upto = 0

    def _match_prefix(self, r: RequestState) -> None:
        """A fresh (or recomputed) request takes the cached blocks of its prefix, up to the
        first block not cached: those tokens start computed."""
        if not self.prefix_caching or r.group < 0 or r.computed or r.blocks:
            return
        if self._lru:
            self._trim()
        bs = self.block_size
        refs, lru = self._refs, self._lru
        for i in range(min(r.prefix, r.prompt - 1) // bs):
            key = (r.group, i)
            if key in refs:
                refs[key] += 1
            elif key in lru:
                del lru[key]
                refs[key] = 1
                self.free_blocks -= 1
            else:
                break
            r.keys.append(key)
        r.blocks = len(r.keys)
        r.computed = r.blocks * bs
        r.cached_upto = r.blocks

    def _unmatch(self, r: RequestState) -> None:
        """Undo `_match_prefix` for a request that was not admitted after all."""
        if r.keys:
            self._release(r)
            r.computed = 0

    def _cache_prefix(self, r: RequestState, tokens: int) -> None:
        """Register the full prefix blocks among the first `tokens` of `r` (computed, or
        being computed by this step) as cached; one already cached (computed twice at once)
        stays the request's own."""
        if not self.prefix_caching:
            return
        end = min(tokens, r.prefix) // self.block_size
        refs, lru = self._refs, self._lru
        for i in range(r.cached_upto, end):
            key = (r.group, i)
            if key not in refs and key not in lru:
                refs[key] = 1
                r.keys.append(key)
        if end > r.cached_upto:
            r.cached_upto = end

    def _make_room(self, r: RequestState, n: int) -> int:
        """Allocate the blocks of `n` more tokens of running request `r`, preempting the last
        running request until they fit (vLLM's `_preempt` loop, V1 and V0 alike); returns the
        preemptions, `r` itself possibly the last (then it has left `running`)."""
        preempted = 0
        running = self.running
        while not self._grow(r, n):
            victim = running[-1]
            self._preempt(victim)
            preempted += 1
            if victim == r.rid:
                break
        return preempted

    def _preempt(self, rid: int, front: bool = True) -> None:
        """Preemption: blocks freed; by recompute every token is computed again, by swap the
        computed tokens only need their blocks back."""
        r = self.requests[rid]
        self._release(r)
        if not self.swap:
            r.computed = 0
        self.running.remove(rid)
        if front:
            self.waiting.appendleft(rid)
        else:
            self.waiting.append(rid)
        self.preemptions += 1

    # -- steps -------------------------------------------------------------------------

    def _step(self, scheduled: list[tuple[int, int]], preempted: int,
              admitted: list[int]) -> Step:
        """The Step of `scheduled` with the batch's sums (before its tokens are applied)."""
        tokens = query_prefix = query_squares = kv_tokens = sampled = 0
        requests = self.requests
        for rid, n in scheduled:
            r = requests[rid]
            tokens += n
            query_prefix += n * r.computed
            query_squares += n * n
            kv_tokens += r.computed + n
            sampled += r.computed + n >= r.prompt + r.generated
        return Step(scheduled, preempted, admitted, tokens, query_prefix, query_squares,
                    kv_tokens, sampled)

    def _apply(self, step: Step) -> tuple[list[RequestState], list[int]]:
        """Add a finished iteration's tokens: (requests that sampled, requests that ended)."""
        sampled, done = [], []
        requests = self.requests
        late = self.prefix_caching and not self.cache_at_schedule
        for rid, n in step.scheduled:
            r = requests[rid]
            r.computed += n
            if late and r.group >= 0:
                self._cache_prefix(r, r.computed)
            if r.computed >= r.prompt + r.generated:
                r.generated += 1
                sampled.append(r)
                if r.generated >= r.output:
                    done.append(rid)
        return sampled, done

    def complete(self, step: Step) -> tuple[list[RequestState], list[int]]:
        """Apply a finished iteration: (requests that sampled a token, requests that ended);
        the ended ones leave with their blocks."""
        sampled, done = self._apply(step)
        for rid in done:
            self.finish(rid)
        return sampled, done

    def finish(self, rid: int) -> None:
        """A request ended: it leaves the running set and gives its blocks back."""
        r = self.requests.pop(rid)
        self._release(r)
        self.running.remove(rid)
