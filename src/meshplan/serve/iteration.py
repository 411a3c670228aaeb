"""Time of one engine iteration and the KV-cache capacity of one instance, from the layer core.

An iteration runs the scheduled tokens of every request in the batch (prefill chunks after
their cached prefixes, one token per decoding request) through the model once: the embedding,
every layer (`cost.layer.layer_forward_time` on the batch's shape, with the KV cache's own
layout), the TP all-reduces after the attention and MLP blocks (`cost.collectives`, no
sequence parallelism in serving engines), the LM head over the positions that sample a
token, and the engine's host overhead per step (engine profile data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.collectives import tp_block_time, tp_blocks_per_layer
from meshplan.cost.kernels import Kernels
from meshplan.cost.layer import (
    BatchShape,
    LayerDegrees,
    attention_core_flops,
    attention_io_bytes,
    embedding_bytes,
    head_parts,
    kv_cache_bytes_per_token,
    layer_forward_time,
)
from meshplan.cost.params import count_params
from meshplan.mesh import Group, Mesh
from meshplan.serve.deployment import DTYPE_BYTES, Deployment
from meshplan.specs.plan import Plan, PlanArrays

SAMPLER_BYTES_PER_LOGIT = 4.0
"""fp32 logits the sampler holds per vocabulary entry (vLLM upcasts before sampling)."""


@dataclass(frozen=True)
class KVCapacity:
    """How an instance's GPU memory divides (bytes per GPU) and the KV blocks left."""

    budget_bytes: float
    """What the engine's memory fraction grants it (`kv_capacity`)."""
    weights_bytes: float
    workspace_bytes: float
    """Peak activations of the engine's profiling run (max_num_batched_tokens dummy tokens)."""
    reserved_bytes: float
    """CUDA context, NCCL and CUDA-graph memory outside the allocator."""
    block_bytes: float
    """One KV block of every layer."""
    num_blocks: int

    @property
    def fits(self) -> bool:
        return self.num_blocks > 0

    def to_json(self) -> dict[str, float]:
        gib = 2**30
        return {"budget_gib": self.budget_bytes / gib, "weights_gib": self.weights_bytes / gib,
                "workspace_gib": self.workspace_bytes / gib,
                "reserved_gib": self.reserved_bytes / gib, "kv_blocks": self.num_blocks,
                "kv_cache_gib": self.num_blocks * self.block_bytes / gib}


def kv_capacity(d: Deployment) -> KVCapacity:
    """The KV blocks of one instance's GPU, as each engine counts its memory fraction f
    (`EngineProfile.memory_fraction_of`):

    * `hbm` (vLLM, worker `determine_available_memory`): KV = f x HBM - weights - the
      profiled peak activations - the non-torch memory;
    * `free` (TensorRT-LLM, `KvCacheConfig.free_gpu_memory_fraction`): KV = f x (HBM -
      weights - activations - non-torch memory), the memory left after loading and
      profiling;
    * `weights_and_kv` (SGLang, `ModelRunner.profile_max_num_token`): KV = f x (HBM -
      non-torch memory) - weights, the activations living in the 1 - f left over.

    The profiled peak is meshplan's estimate: per token the hidden state, the QKV output and
    the gated MLP input (bf16), plus the sampler's fp32 logits of max_num_seqs sequences."""
    m, acc, t = d.model, d.cluster.accelerator, d.tp
    f = d.gpu_memory_utilization
    weights = DTYPE_BYTES[d.spec.weights_dtype] * count_params(m).total / t
    qkv = (m.num_attention_heads + 2 * m.kv_heads) * m.head_size / t
    ffn = m.ffn_hidden_size if m.moe is None else m.moe.expert_ffn_hidden_size * m.moe.top_k
    per_token = 2.0 * (2 * m.hidden_size + qkv + 2 * ffn / t)
    logits = min(d.max_num_seqs, d.max_num_batched_tokens) * m.vocab_size / t
    workspace = d.max_num_batched_tokens * per_token + SAMPLER_BYTES_PER_LOGIT * logits
    reserved = acc.reserved_memory_bytes
    per_token_kv = kv_cache_bytes_per_token(m, t, DTYPE_BYTES[d.spec.kv_cache_dtype])
    block = float(d.block_size * m.num_layers * per_token_kv)
    hbm = acc.memory_bytes
    kind = d.engine.memory_fraction_of
    if kind == "hbm":
        budget = f * hbm
        free = budget - weights - workspace - reserved
    elif kind == "free":
        free = f * (hbm - weights - workspace - reserved)
        budget = hbm - (1 - f) * max(hbm - weights - workspace - reserved, 0.0)
    else:  # weights_and_kv
        workspace = 0.0
        budget = f * (hbm - reserved) + reserved
        free = budget - weights - reserved
    return KVCapacity(budget, weights, workspace, reserved, block,
                      max(int(free // block), 0))


class IterationCost:
    """Seconds of one iteration of one instance, for a batch given by its sums.

    `time_reference` runs the layer core on the batch's shape; `time` gives the same seconds
    (to rounding) from a split of that sum: every term but the fused attention core depends
    on the query tokens alone (cached per token count), the LM head on the sampled positions
    alone (cached), and the core is max(FLOPs / peak, bytes / bandwidth) with FLOPs linear in
    the causal pairs and bytes linear in the tokens and the keys read (coefficients taken from
    the cost core's own functions). `decode_times` times consecutive decode-only steps at once.
    """

    def __init__(self, d: Deployment):
        m = d.model
        self.model = m
        precision = "fp8" if d.spec.weights_dtype == "fp8" else "bf16"
        # The engine's fixed cost per block stands in for training's per-layer overhead.
        self.K = Kernels(d.cluster.model_copy(
            update={"kernel_overhead": d.engine.block_overhead_s}), precision)
        # Without expert parallelism every expert is split over the TP group (vLLM's fused
        # MoE layer shards each expert's weights by tp).
        self.deg = LayerDegrees(tp=d.tp, etp=d.tp)
        self.kv_bytes = kv_cache_bytes_per_token(m, d.tp, DTYPE_BYTES[d.spec.kv_cache_dtype])
        mesh = Mesh(PlanArrays.from_plans([Plan(tp=d.tp)]))
        self.tp_members = mesh.members(d.cluster, Group.TP)
        self.cluster = d.cluster
        self.dense_layers = m.num_layers - m.num_moe_layers
        self.moe_layers = m.num_moe_layers
        self.overhead = d.iteration_overhead_s
        self.layers = m.num_layers
        t = d.tp
        # The attention core's two linear pieces (the cost core's formulas at unit inputs).
        attn_rate = self.K.attn_peak * self.K.attn_eff
        self._core_flop = float(attention_core_flops(m, 1.0, t)) / attn_rate
        unit_q = BatchShape(1.0, 1.0, 0.0, 0.0, 0.0)
        unit_kv = BatchShape(0.0, 0.0, 0.0, 0.0, 1.0)
        self._core_q = float(attention_io_bytes(m, unit_q, t, self.kv_bytes)) / self.K.mem_bw
        self._core_kv = float(attention_io_bytes(m, unit_kv, t, self.kv_bytes)) / self.K.mem_bw
        self._base: dict[int, float] = {}
        self._head: dict[int, float] = {}

    def _core(self, tokens: float, pairs: float, kv_tokens: float) -> float:
        return max(self._core_flop * pairs, self._core_q * tokens + self._core_kv * kv_tokens)

    def _head_time(self, sampled: int) -> float:
        h = self._head.get(sampled)
        if h is None:
            h = float(np.asarray(head_parts(self.model, self.K, max(sampled, 1),
                                            self.deg).time(self.K)))
            self._head[sampled] = h
        return h

    def _base_time(self, tokens: int) -> float:
        """Everything but the attention core, the head and the host overhead."""
        b = self._base.get(tokens)
        if b is None:
            full = self.time_reference(1, tokens, 0.0, 0.0, 0.0, 1)
            b = full - self.overhead - self._head_time(1) \
                - self.layers * self._core(tokens, 0.0, 0.0)
            self._base[tokens] = b
        return b

    def time(self, num_seqs: int, tokens: float, query_prefix: float, query_squares: float,
             kv_tokens: float, sampled: int) -> float:
        """As `time_reference` (equal to ~1e-12 relative), from cached parts."""
        T = int(tokens)
        if tokens != T:
            return self.time_reference(num_seqs, tokens, query_prefix, query_squares,
                                       kv_tokens, sampled)
        core = self._core(tokens, query_prefix + 0.5 * query_squares, kv_tokens)
        return self._base_time(T) + self.layers * core + self._head_time(sampled) \
            + self.overhead

    def decode_terms(self, num_seqs: int) -> tuple[float, float, float, float, float, float,
                                                    float]:
        """(base, layers, head, overhead, core per pair, core per query token, core per key)
        of a decode-only step of `num_seqs` sequences: its seconds at a prefix sum P are
        base + layers x max(pair x (P + B / 2), query x B + key x (P + B)) + head + overhead,
        in that order (the same floats as `time` and `decode_times`)."""
        return (self._base_time(num_seqs), float(self.layers), self._head_time(num_seqs),
                self.overhead, self._core_flop, self._core_q, self._core_kv)

    def decode_times(self, num_seqs: int, prefix_sum: float, steps: int) -> np.ndarray:
        """Seconds of `steps` consecutive decode-only steps of `num_seqs` sequences (one query
        token each, every one sampling) whose cached prefixes sum to `prefix_sum` at the
        first: the sum grows by `num_seqs` a step. Elementwise as `time`."""
        B = float(num_seqs)
        prefix = prefix_sum + B * np.arange(steps, dtype=float)
        core = np.maximum(self._core_flop * (prefix + 0.5 * B),
                          self._core_q * B + self._core_kv * (prefix + B))
        return self._base_time(num_seqs) + self.layers * core \
            + self._head_time(num_seqs) + self.overhead

    def time_reference(self, num_seqs: int, tokens: float, query_prefix: float,
                       query_squares: float, kv_tokens: float, sampled: int) -> float:
        """One forward of a batch: `tokens` query tokens of `num_seqs` sequences (with
        sum(q x prefix), sum(q^2) and the keys read, as `BatchShape.from_sums`), of which
        `sampled` positions sample a token."""
        m, K, deg = self.model, self.K, self.deg
        shape = BatchShape.from_sums(num_seqs, tokens, query_prefix, query_squares, kv_tokens)
        total = float(K.memory(embedding_bytes(m, tokens, deg)))
        block = float(tp_block_time(self.cluster, self.tp_members, tokens, m.hidden_size, False)
                      [0]) if deg.tp > 1 else 0.0
        for layers, moe in ((self.dense_layers, False), (self.moe_layers, True)):
            if layers:
                work = float(np.asarray(layer_forward_time(m, K, shape, deg, moe,
                                                           kv_bytes_per_token=self.kv_bytes)))
                total += layers * (work + float(tp_blocks_per_layer(moe, True)) * block)
        total += float(np.asarray(head_parts(m, K, max(sampled, 1), deg).time(K)))
        return total + self.overhead
