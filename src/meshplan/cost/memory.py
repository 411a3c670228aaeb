"""Memory per GPU: model states under ZeRO/FSDP, activations, buffers.

Sources:
- Model states: ZeRO (Rajbhandari et al., SC20, Sec. 3.1 and Fig. 1): mixed-precision Adam
  keeps 2 bytes of weights, 2-4 of gradients and 12 of optimizer state (fp32 master, m, v) per
  parameter; stage 1 shards the 12, stage 2 also the gradients, stage 3 also the weights.
- Activations: Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
  Models" (MLSys 2023, arXiv:2205.05198), Sec. 4: per layer s b h (34 + 5 a s / h) bytes,
  with tensor + sequence parallelism s b h / t (34 + 5 a s / h), selective recompute
  34 s b h / t, full recompute 2 s b h / t. meshplan counts the same tensors one by one so that
  GQA, gated MLPs, FlashAttention (no s^2 terms; a fp32 log-sum-exp instead), no-dropout models
  and MoE fall out of the same sum; with GPT-3 settings it reduces to the paper's formula.
- In-flight micro-batches per schedule: see `pipeline.in_flight_microbatches`.
"""

from __future__ import annotations

import numpy as np

from meshplan.cost.params import ParamCounts
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import PlanArrays

WEIGHT_BYTES = 2.0
"""bf16 working copy of the weights."""
OPTIMIZER_BYTES = 12.0
"""fp32 master weights + Adam m and v (ZeRO paper, K = 12)."""


def attention_activation_bytes(model: Model, job: Job, P: PlanArrays) -> np.ndarray:
    """Bytes the attention block keeps for backward, one micro-batch, one GPU."""
    b, t, c, s, h = P.mbs, P.tp, P.cp, job.seq_len, model.hidden_size
    T = b * s / c
    sp = np.where(P.sp, t, 1)
    a, d = model.num_attention_heads, model.head_size
    kv_split = np.minimum(t, model.kv_heads)
    dv = model.mla.v_head_dim if model.mla is not None else d
    gemm_in = _gemm_input_bytes(job)
    # norm input, QKV input, out-proj dropout mask (replicated across tp without SP)
    replicated = (2 + gemm_in + (1 if model.dropout else 0)) * T * h / sp
    split = 2 * T * a * d / t + 2 * T * model.kv_heads * (d + dv) / kv_split
    split = split + gemm_in * T * a * dv / t  # out-proj input
    if job.flash_attention:
        scores = 4.0 * T * a / t  # fp32 log-sum-exp per row
    else:
        scores = (2 + (3 if model.dropout else 0)) * b * a / t * (s / c) * s
        scores = np.where(P.recompute >= 1, 0.0, scores)  # selective drops the s^2 terms
    # Selective recompute with fused attention rebuilds the QKV input from the norm input
    # (torchtitan op-level SAC, Megatron-Core --recompute-modules layernorm).
    rebuilt = np.where((P.recompute == 1) & job.flash_attention, gemm_in * T * h / sp, 0.0)
    return replicated + split + scores - rebuilt


def _gemm_input_bytes(job: Job) -> float:
    """Bytes per saved GEMM input: FP8 training keeps the FP8 cast (Transformer Engine's
    Linear / LayerNormLinear save their quantised input for the weight gradient)."""
    return 1.0 if job.precision == "fp8" else 2.0


def mlp_activation_bytes(model: Model, job: Job, P: PlanArrays, moe: bool) -> np.ndarray:
    """Bytes the MLP (or MoE) block keeps for backward, one micro-batch, one GPU."""
    b, t, c, s, h = P.mbs, P.tp, P.cp, job.seq_len, model.hidden_size
    T = b * s / c
    sp = np.where(P.sp, t, 1)
    gemm_in = _gemm_input_bytes(job)
    # fc1 output (2 or 1 matrices' worth, kept for the activation's backward) + fc2 input
    per_f: float | np.ndarray = (4.0 if model.gated else 2.0) + gemm_in
    replicated = (2 + gemm_in + (1 if model.dropout else 0)) * T * h / sp
    # Selective recompute with fused attention also rebuilds the norm output and the
    # activation function's output (Megatron-Core moe_act / layernorm modules, torchtitan SAC).
    sel = (P.recompute == 1) & job.flash_attention
    replicated = replicated - np.where(sel, gemm_in * T * h / sp, 0.0)
    per_f = per_f - np.where(sel, gemm_in, 0.0)
    if not moe:
        return replicated + per_f * T * model.ffn_hidden_size / t
    assert model.moe is not None
    m = model.moe
    assignments = T * P.etp / t * m.top_k
    routed = assignments * (2 * h + per_f * m.expert_ffn_hidden_size / P.etp)
    shared = per_f * T * m.num_shared_experts * m.shared_expert_ffn_hidden_size / t
    router = 4.0 * T / sp * m.num_experts
    return replicated + routed + shared + router


def layer_activation_bytes(model: Model, job: Job, P: PlanArrays, moe: bool) -> np.ndarray:
    """Korthikanti-style per-layer activation memory under the plan's recompute policy."""
    full = attention_activation_bytes(model, job, P) + mlp_activation_bytes(model, job, P, moe)
    layer_input = 2.0 * P.mbs * job.seq_len / P.cp * model.hidden_size / np.where(P.sp, P.tp, 1)
    return np.where(P.recompute == 2, layer_input, full)


def head_activation_bytes(model: Model, job: Job, P: PlanArrays) -> np.ndarray:
    """Last stage: LM-head input and fp32 logits kept by the cross-entropy (one micro-batch)."""
    T = P.mbs * job.seq_len / P.cp
    sp = np.where(P.sp, P.tp, 1)
    return 2 * T * model.hidden_size / sp + 4.0 * T * model.vocab_size / P.tp


def model_state_bytes(params: np.ndarray, P: PlanArrays, shard: np.ndarray,
                      job: Job) -> dict[str, np.ndarray]:
    """Weights, gradients and optimizer states of `params` parameters on one GPU.

    `shard` is the ZeRO/FSDP sharding group these parameters are split over (dp_shard x cp for
    dense weights, the expert data-parallel group for experts).
    """
    z = P.zero
    weights = WEIGHT_BYTES * params / np.where(z >= 3, shard, 1)
    grads = job.grad_bytes * params / np.where(z >= 2, shard, 1)
    optimizer = OPTIMIZER_BYTES * params / np.where(z >= 1, shard, 1)
    optimizer = np.where(P.offload, 0.0, optimizer)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def stage_params(counts: ParamCounts, model: Model, P: PlanArrays, layers: np.ndarray,
                 first: np.ndarray | bool, last: np.ndarray | bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(dense, expert) parameters held by one GPU of a pipeline rank holding `layers` layers.

    The embedding sits on the first rank and the LM head on the last (Megatron's layout; tied
    embeddings keep a copy on both ends); MoE layers are spread in proportion.
    """
    L = model.num_layers
    per_rank = np.where(P.pp > 1, layers, L)
    non_expert = (counts.num_dense_layers * counts.per_dense_layer
                  + counts.num_moe_layers * counts.per_moe_layer_non_expert) / L
    dense = per_rank * non_expert / P.tp
    dense = dense + np.where(first, counts.embedding, 0) / P.tp
    tied_copy = np.where(np.logical_and(model.tied_embeddings, np.logical_not(first)),
                         counts.embedding, 0)
    dense = dense + np.where(last, counts.head + tied_copy, 0) / P.tp
    expert = per_rank * (counts.num_moe_layers / L) * counts.expert / (P.ep * P.etp)
    return dense, expert
