"""One scheduler per engine, behind one interface (`base.Scheduler`); `make_scheduler` picks
the deployment's (its engine profile's `scheduler` field)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshplan.serve.schedulers.base import RequestState, Scheduler, Step
from meshplan.serve.schedulers.sglang import SGLangScheduler
from meshplan.serve.schedulers.static import StaticScheduler
from meshplan.serve.schedulers.trtllm import TRTLLMScheduler
from meshplan.serve.schedulers.vllm import VLLMScheduler
from meshplan.serve.schedulers.vllm_v0 import VLLMV0Scheduler

if TYPE_CHECKING:
    from meshplan.serve.deployment import Deployment
    from meshplan.serve.iteration import KVCapacity


def sglang_max_running(d: Deployment, kv_tokens: int) -> int:
    """SGLang's default max_running_requests: min(KV tokens // 2, the request pool
    min(max(KV tokens / context length x 512, 2048), 4096)) (`ModelRunner`, `TpModelWorker`);
    the context length is the model's max_seq_len (8192 where the model gives none)."""
    knobs = d.engine.sglang
    assert knobs is not None
    context = d.model.max_seq_len or 8192
    pool = min(max(int(kv_tokens / context * knobs.request_pool_per_context),
                   knobs.request_pool_min), d.engine.max_num_seqs)
    return max(min(kv_tokens // 2, pool), 1)


def make_scheduler(d: Deployment, capacity: KVCapacity) -> Scheduler:
    """A fresh scheduler for one instance of `d`."""
    e = d.engine
    caching = e.enable_prefix_caching if d.spec.enable_prefix_caching is None \
        else d.spec.enable_prefix_caching
    blocks, bs = capacity.num_blocks, d.block_size
    s: Scheduler
    if e.scheduler == "vllm":
        s = VLLMScheduler(blocks, bs, d.max_num_seqs, d.max_num_batched_tokens,
                          d.enable_chunked_prefill, caching)
    elif e.scheduler == "vllm-v0":
        s = VLLMV0Scheduler(blocks, bs, d.max_num_seqs, d.max_num_batched_tokens, False,
                            caching, decode_steps=d.spec.num_scheduler_steps)
    elif e.scheduler == "sglang":
        k = e.sglang
        assert k is not None
        seqs = d.spec.max_num_seqs or sglang_max_running(d, blocks * bs)
        s = SGLangScheduler(blocks, bs, seqs, d.max_num_batched_tokens,
                            d.enable_chunked_prefill, caching, k.max_prefill_tokens,
                            k.init_new_token_ratio, k.min_new_token_ratio_factor,
                            k.new_token_ratio_decay_steps, k.clip_max_new_tokens,
                            k.retract_decode_steps)
    elif e.scheduler == "trtllm":
        s = TRTLLMScheduler(blocks, bs, d.max_num_seqs, d.max_num_batched_tokens,
                            d.enable_chunked_prefill)
    else:
        s = StaticScheduler(blocks, bs, d.max_num_seqs, d.max_num_batched_tokens, False)
    s.swap = e.preemption == "swap"
    return s


__all__ = ["RequestState", "SGLangScheduler", "Scheduler", "StaticScheduler", "Step",
           "TRTLLMScheduler", "VLLMScheduler", "VLLMV0Scheduler", "make_scheduler",
           "sglang_max_running"]
