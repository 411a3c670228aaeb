"""Forward cost of one transformer layer, the embedding and the LM head, for any batch shape.

The shared core of training and serving. A `BatchShape` says what one GPU's forward pass
processes: query tokens, the (query, key) pairs attention computes and the keys it reads, as
sums over the batch's sequences, so a training micro-batch (square, causal), a prefill chunk
of q tokens against kv cached ones and a decode batch of sequences with different KV lengths
are costed by the same functions. `LayerDegrees` are the mesh degrees that split one layer.

Each function returns the forward's parts (`LayerParts`): weight GEMMs (each the slower of its
FLOPs and its HBM bytes, `Kernels.gemm`), the attention core, element-wise bytes. Training
composes backward and recompute from them (`meshplan.cost.train.passes`).

Element-wise traffic per layer, forward (bytes; T = query tokens on this GPU, sp = t with
sequence parallel else 1): norms 2 x 4Th/sp, residual adds 2 x 6Th/sp, dropout 2 x 5Th/sp,
RoPE 4T(a+k)d/t, activation 6Tf/t (gated) or 4Tf/t, unfused softmax (4 + 5 with dropout)
bytes per score, MoE routing and permutation (`cost.moe`), FP8 casts 3 bytes per GEMM input
element. These
counts are meshplan's (one read and one write per tensor per kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import flops as F
from meshplan.cost.kernels import ACTIVATION_BYTES, Kernels, linear_bytes
from meshplan.cost.moe import (
    ALLTOALL,
    FUSED,
    capacity_share,
    dispatcher_kernels,
    grouped_gemm_rows,
    load_imbalance,
    permutation_bytes,
    router_bytes,
)
from meshplan.mesh import Mesh
from meshplan.specs.model import Model

Num = float | np.ndarray


@dataclass(frozen=True)
class BatchShape:
    """One GPU's forward batch as sums over its sequences (arrays broadcast over plans)."""

    num_seqs: Num
    tokens: Num
    """Query tokens on this GPU (its context-parallel share)."""
    causal_pairs: Num
    """(query, key) pairs inside the causal mask: what a fused attention kernel computes.
    A query block of q tokens after `prefix` cached keys: q x prefix + q^2 / 2."""
    dense_pairs: Num
    """Query x key pairs of the score blocks: what an unfused kernel computes (no skipping)."""
    kv_tokens: Num
    """Keys the sequences attend to, summed: the K/V attention reads."""

    @classmethod
    def training(cls, micro_batch_size: Num, seq_len: int, cp: Num) -> BatchShape:
        """A micro-batch of whole sequences, split over cp ranks (load-balanced causal ring:
        every rank's queries see the whole sequence's keys, half of them masked)."""
        tokens = micro_batch_size * seq_len / cp
        dense = tokens * seq_len
        return cls(micro_batch_size, tokens, 0.5 * dense, dense, micro_batch_size * seq_len)

    @classmethod
    def requests(cls, query_tokens: np.ndarray, prefix_tokens: np.ndarray) -> BatchShape:
        """Sequences each adding `query_tokens` after `prefix_tokens` cached keys (a prefill
        chunk, or a decode step with one query token), on one GPU."""
        q = np.asarray(query_tokens, dtype=float)
        kv = np.asarray(prefix_tokens, dtype=float) + q
        return cls.from_sums(len(q), q.sum(), float((q * (kv - q)).sum()),
                             float((q * q).sum()), kv.sum())

    @classmethod
    def from_sums(cls, num_seqs: Num, tokens: Num, query_prefix: Num, query_squares: Num,
                  kv_tokens: Num) -> BatchShape:
        """From sum(q), sum(q x prefix), sum(q^2) and sum(prefix + q) (vectorised use)."""
        return cls(num_seqs, tokens, query_prefix + 0.5 * query_squares,
                   query_prefix + query_squares, kv_tokens)


@dataclass(frozen=True)
class LayerDegrees:
    """Mesh degrees that split one layer (arrays broadcast over plans)."""

    tp: Num = 1
    cp: Num = 1
    ep: Num = 1
    etp: Num = 1
    seq_shard: Num = 1
    """tp with sequence parallelism, else 1: the split outside the TP regions."""
    balanced: Num = False
    """Routing forced even (`Plan.moe_force_balanced`): no load imbalance."""

    @classmethod
    def of(cls, mesh: Mesh) -> LayerDegrees:
        P = mesh.plans
        return cls(P.tp, P.cp, P.ep, P.etp, mesh.seq_shard, P.balanced())


@dataclass(frozen=True)
class LayerParts:
    """Seconds and bytes of one forward pass through one block on one GPU."""

    gemm: np.ndarray
    """Weight GEMMs."""
    core: Num
    """Attention score and value products (0 for an MLP)."""
    elementwise_bytes: Num
    """Norms, residuals, RoPE, activation functions, permutations, casts."""
    score_bytes: Num = 0.0
    """Unfused attention's softmax traffic over the score matrix."""
    launches: Num = 0
    """Kernels beyond the one whose fixed cost `time` counts (a MoE block's routing and
    permutation kernels: `moe.dispatcher_kernels`); the backward launches as many again."""
    activation_bytes: Num = 0.0
    """Of `elementwise_bytes`, the routed experts' activation function's (a MoE block): what
    Megatron-Core's `moe_act` recompute redoes (not the routing or permutation kernels)."""

    def time(self, K: Kernels) -> np.ndarray:
        """Forward time, one kernel-launch overhead included (plus `launches` more)."""
        return self.gemm + self.core + K.memory(self.elementwise_bytes + self.score_bytes) \
            + K.overhead * (1 + self.launches)


def _linear(K: Kernels, flops: Num, tokens: Num, d_in: Num, count: Num = 1.0) -> np.ndarray:
    """`count` linear layers of `flops` each on `tokens` tokens of width `d_in`: the weights
    are flops / (2 tokens) elements and the output width weights / d_in."""
    weights = flops / (2 * np.maximum(tokens, 1e-30))
    nbytes = linear_bytes(tokens, weights, d_in, weights / d_in, K.weight_bytes)
    return K.gemm(flops, count, nbytes)


def attention_core_flops(model: Model, pairs: Num, tp: Num) -> Num:
    """Score (Q K^T) and value (A V) products over `pairs` (query, key) pairs, one GPU."""
    return 2 * pairs * model.num_attention_heads / tp * (model.head_size + F.value_head_dim(model))


def attention_io_bytes(model: Model, shape: BatchShape, tp: Num,
                       kv_bytes_per_token: Num | None = None) -> Num:
    """Bytes a fused attention kernel streams at least: queries and outputs once, K/V once
    per sequence. `kv_bytes_per_token` is the K/V layout it reads; by default bf16 K/V of the
    rank's KV heads (FlashAttention reads GQA heads unexpanded), and for MLA the per-head K/V
    that training materialises from the latent."""
    a, dv = model.num_attention_heads, F.value_head_dim(model)
    if kv_bytes_per_token is None:
        kv_bytes_per_token = (ACTIVATION_BYTES * a / tp * (model.head_size + dv)
                              if model.mla is not None
                              else kv_cache_bytes_per_token(model, tp, ACTIVATION_BYTES))
    return ACTIVATION_BYTES * shape.tokens * a / tp * (model.head_size + dv) \
        + shape.kv_tokens * kv_bytes_per_token


def attention_parts(model: Model, K: Kernels, shape: BatchShape, deg: LayerDegrees,
                    fused: bool = True, kv_bytes_per_token: Num | None = None,
                    block_efficiency: Num = 1.0) -> LayerParts:
    """Attention block: QKV and output GEMMs, the attention core, norms/residual/RoPE.
    `block_efficiency`: the fused kernel's rate on smaller blocks (`Kernels.attention`)."""
    t, T, sp = deg.tp, shape.tokens, deg.seq_shard
    h, d, a = model.hidden_size, model.head_size, model.num_attention_heads
    dv = F.value_head_dim(model)
    gemm = _linear(K, F.qkv_flops(model, T) / t, T, h) \
        + _linear(K, F.out_proj_flops(model, T) / t, T, a * dv / t)
    score_bytes: Num = 0.0
    if fused:
        core = K.attention(attention_core_flops(model, shape.causal_pairs, t),
                           attention_io_bytes(model, shape, t, kv_bytes_per_token),
                           block_efficiency=block_efficiency)
    else:
        core = unfused_score_gemms(model, K, shape, t)
        score_bytes = unfused_score_bytes(model, a / t * shape.dense_pairs)
    elem = (4 + 6 + (5 if model.dropout else 0)) * T * h / sp
    if model.position_embedding == "rope":
        elem = elem + 4 * T * (a + model.kv_heads) * d / t
    if K.precision == "fp8":
        elem = elem + 3 * T * (h + a * dv / t)
    return LayerParts(gemm, core, elem, score_bytes)


SOFTMAX_BYTES = (4.0, 6.0)
"""Forward, backward bytes per score of the fused scale-mask-softmax (Megatron-LM
FusedScaleMaskSoftmax): forward reads the fp16 scores and writes the probabilities; backward
reads the output gradient and the saved probabilities and writes the input gradient."""
DROPOUT_BYTES = (5.0, 5.0)
"""Attention dropout per score: forward reads the probabilities and writes its fp16 output and
a 1-byte mask (the 2 + 1 bytes Korthikanti et al. 2022 Sec. 4.1 count as saved); backward
reads the gradient and the mask and writes the gradient."""


def unfused_score_bytes(model: Model, scores: Num, backward: bool = False) -> Num:
    """HBM bytes of unfused attention's element-wise passes over `scores` score elements
    (softmax, then dropout when the model has it), forward or backward."""
    k = int(backward)
    return (SOFTMAX_BYTES[k] + (DROPOUT_BYTES[k] if model.dropout else 0.0)) * scores


def unfused_score_gemms(model: Model, K: Kernels, shape: BatchShape, tp: Num) -> np.ndarray:
    """Unfused attention's two GEMMs, forward: Q K^T into the score matrix (Megatron-LM
    CoreAttention's torch.baddbmm) and probabilities x V (torch.bmm), each one strided-batched
    launch over every (sequence, head), so it runs at the efficiency of its total FLOPs and is
    floored by its traffic: the fp16 score matrix written by the first and read by the second
    (2 bytes per score against 2d FLOPs: d = 64-128 FLOP/byte, below an A100's or H100's
    ridge, so these GEMMs are bound by the s^2 traffic). Every pair is computed: no causal
    skipping. The backward runs four such GEMMs (dP, dV, dQ, dK), twice this."""
    a, d, dv = model.num_attention_heads, model.head_size, F.value_head_dim(model)
    scores = a / tp * shape.dense_pairs
    q_rows, kv_rows = a / tp * shape.tokens, a / tp * shape.kv_tokens
    qk_bytes = ACTIVATION_BYTES * (scores + (q_rows + kv_rows) * d)
    pv_bytes = ACTIVATION_BYTES * (scores + (kv_rows + q_rows) * dv)
    return K.gemm(2 * scores * d, 1.0, qk_bytes) + K.gemm(2 * scores * dv, 1.0, pv_bytes)


def _mlp_gemms(model: Model, K: Kernels, tokens: Num, ffn: float, split: Num,
               count: Num = 1.0) -> np.ndarray:
    """fc1 (gate and up fused when gated) and fc2 of `count` MLPs on `tokens` tokens each."""
    h = model.hidden_size
    up = 2 * tokens * h * ffn * (2 if model.gated else 1) / split
    down = 2 * tokens * h * ffn / split
    return _linear(K, up, tokens, h, count) + _linear(K, down, tokens, ffn / split, count)


def _mlp_elementwise(model: Model, tokens: Num, ffn: float, split: Num) -> Num:
    per = 6.0 if model.gated else 4.0
    return per * tokens * ffn / split


def experts_touched(num_experts: int, assignments: Num) -> Num:
    """Expected share of the experts that receive at least one of `assignments` routed
    (token, expert) pairs, routing uniform: 1 - (1 - 1/E)^A (the occupancy problem, Feller,
    An Introduction to Probability Theory, vol. 1, ch. II.11). A decode batch of a few tokens
    reads only those experts' weights; a training micro-batch (A >> E) touches all of them."""
    share = 1.0 - np.power(1.0 - 1.0 / num_experts, assignments)
    return np.maximum(share, 1e-12)


def mlp_parts(model: Model, K: Kernels, shape: BatchShape, deg: LayerDegrees,
              moe: bool, dispatcher: str = FUSED) -> LayerParts:
    """MLP block of a dense layer, or the router, routed and shared experts of a MoE layer
    (norms and residuals are counted with the attention block). `dispatcher`: how the MoE
    block moves its tokens (`moe.ALLTOALL`, Megatron-Core training; `moe.FUSED`, a serving
    engine's fused MoE kernel)."""
    t, T, sp, h = deg.tp, shape.tokens, deg.seq_shard, model.hidden_size
    launches: Num = 0
    if not moe:
        gemm = _mlp_gemms(model, K, T, model.ffn_hidden_size, t)
        elem = _mlp_elementwise(model, T, model.ffn_hidden_size, t)
        fp8_inputs = T * h + T * model.ffn_hidden_size / t
    else:
        assert model.moe is not None
        m = model.moe
        # Tokens an expert-tensor group processes; per local expert, assignments arrive from
        # all ep ranks, spread over the experts that receive any (all of them unless the
        # batch is a few tokens). Megatron-Core's dispatcher (training): on the busiest rank
        # (`moe.load_imbalance`), each expert's rows padded to whole tiles of the grouped
        # GEMM, its routing and permutation kernels (`cost.moe`); a serving engine's fused
        # MoE kernel: balanced, one permutation each way (8 T K h / t bytes).
        megatron = dispatcher == ALLTOALL
        tokens_g = T * deg.etp / t
        local = m.num_experts / deg.ep
        assignments = tokens_g * m.top_k * capacity_share(m)
        touched = experts_touched(m.num_experts, assignments * deg.ep)
        busiest = assignments * (load_imbalance(m, assignments, deg.ep, deg.balanced)
                                 if megatron else 1.0)
        per_expert = busiest * deg.ep / m.num_experts / touched
        gemm = _mlp_gemms(model, K, grouped_gemm_rows(per_expert) if megatron else per_expert,
                          m.expert_ffn_hidden_size, deg.etp, count=local * touched)
        elem = act = _mlp_elementwise(model, busiest, m.expert_ffn_hidden_size, deg.etp)
        if megatron:
            elem = elem + permutation_bytes(model, tokens_g, deg.ep, local) \
                + router_bytes(model, T / sp)
            launches = dispatcher_kernels(deg.ep, local)
        else:
            elem = elem + 8 * T * m.top_k * h / t
        gemm = gemm + _linear(K, 2 * T / sp * h * m.num_experts, T / sp, h)
        if m.num_shared_experts:
            f_sh = m.num_shared_experts * m.shared_expert_ffn_hidden_size
            gemm = gemm + _mlp_gemms(model, K, T, f_sh, t)
            elem = elem + _mlp_elementwise(model, T, f_sh, t)
        fp8_inputs = (T + busiest) * h
    if K.precision == "fp8":
        elem = elem + 3 * fp8_inputs
    return LayerParts(gemm, 0.0, elem, launches=launches,
                      activation_bytes=act if moe else 0.0)


def head_parts(model: Model, K: Kernels, tokens: Num, deg: LayerDegrees) -> LayerParts:
    """Final norm and LM head GEMM over `tokens` positions (the loss is the caller's)."""
    gemm = _linear(K, F.head_flops(model, tokens) / deg.tp, tokens, model.hidden_size)
    return LayerParts(gemm, 0.0, 4 * tokens * model.hidden_size / deg.seq_shard)


def mtp_projection_parts(model: Model, K: Kernels, tokens: Num, deg: LayerDegrees) -> LayerParts:
    """A multi-token-prediction module's input: RMSNorm of the hidden state and of the next
    token's embedding, concatenated and projected 2h -> h (DeepSeek-V3, arXiv:2412.19437,
    Sec. 2.2 Eq. 21; Megatron-Core `MultiTokenPredictionLayer` `eh_proj`, column-parallel).
    Its transformer layer and the shared LM head are costed as the model's own."""
    h = model.hidden_size
    gemm = _linear(K, F.mtp_projection_flops(model, tokens) / deg.tp, tokens, 2 * h)
    return LayerParts(gemm, 0.0, 2 * 4 * tokens * h / deg.seq_shard)


def embedding_bytes(model: Model, tokens: Num, deg: LayerDegrees) -> Num:
    """Token embedding gather: read and write one hidden vector per token."""
    return 4 * tokens * model.hidden_size / deg.seq_shard


def kv_cache_bytes_per_token(model: Model, tp: Num = 1, dtype_bytes: float = 2.0) -> Num:
    """KV-cache bytes one token adds to one layer on one GPU.

    MHA / GQA / MQA: K and V of each KV head (Shazeer 2019; Ainslie et al. 2023), the heads
    split over tp and replicated once tp exceeds them (as vLLM does). MLA: the compressed
    latent and the decoupled RoPE key, (d_c + d_h^R) elements (DeepSeek-V2, arXiv:2405.04434,
    Sec. 2.1 and Table 1), kept whole on every tensor-parallel rank.
    """
    if model.mla is not None:
        return (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * dtype_bytes \
            + 0.0 * np.asarray(tp)
    local = model.kv_heads / np.minimum(tp, model.kv_heads)
    return 2 * local * model.head_size * dtype_bytes


def layer_forward_time(model: Model, K: Kernels, shape: BatchShape, deg: LayerDegrees,
                       moe: bool, fused: bool = True,
                       kv_bytes_per_token: Num | None = None) -> np.ndarray:
    """One layer's forward on one GPU (attention and MLP or MoE block, no communication)."""
    attn = attention_parts(model, K, shape, deg, fused, kv_bytes_per_token)
    return attn.time(K) + mlp_parts(model, K, shape, deg, moe).time(K)
