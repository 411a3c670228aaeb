"""Forward, backward and recompute time of one training micro-batch through one layer.

Composed from the layer core's forward parts (`meshplan.cost.layer`). The backward pass of a
linear layer is two GEMMs of the forward's size: input gradient (I) and weight gradient (W),
as split by Zero Bubble (Qi et al. 2024); element-wise kernels move twice the forward's bytes;
fused attention's backward does twice the forward's FLOPs at its own efficiency
(FlashAttention-2, Dao 2023, Sec. 3.1: 2.5x the matmuls with the recomputed scores, folded
into the calibrated backward efficiency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.collectives import cp_block_efficiency
from meshplan.cost.flops import out_proj_flops, qkv_flops
from meshplan.cost.kernels import Kernels
from meshplan.cost.layer import (
    BatchShape,
    LayerDegrees,
    attention_core_flops,
    attention_parts,
    embedding_bytes,
    head_parts,
    mlp_parts,
    mtp_projection_parts,
    unfused_score_bytes,
)
from meshplan.cost.moe import ALLTOALL
from meshplan.cost.train.recompute import full_share, module_masks, rebuilds
from meshplan.mesh import Mesh
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import PlanArrays

CE_FORWARD_BYTES = 12.0
"""Bytes per logit for the vocab-parallel cross-entropy forward (read bf16, fp32 softmax)."""
CE_BACKWARD_BYTES = 8.0


@dataclass(frozen=True)
class PassTimes:
    """Seconds for one micro-batch through one unit (layer or end-stage extra) on one GPU."""

    forward: np.ndarray
    backward_input: np.ndarray
    """I: gradients w.r.t. inputs (attention backward and element-wise included)."""
    backward_weight: np.ndarray
    """W: weight-gradient GEMMs (deferrable by zero-bubble schedules)."""
    recompute: np.ndarray
    """Extra forward work redone before the backward under the plan's recompute policy."""

    @property
    def backward(self) -> np.ndarray:
        return self.backward_input + self.backward_weight


@dataclass(frozen=True)
class AttentionTimes(PassTimes):
    """An attention block's passes and, within them, its attention core's (what context
    parallelism's ring exchange can hide behind: `train.comm.cp_exposed`)."""

    core_forward: np.ndarray
    core_backward: np.ndarray


NORM_BYTES = 4.0
"""Bytes per element of one norm's forward (read and write, 16-bit): what recomputing it
costs."""


def _mla_up_proj_share(model: Model) -> float:
    """MLA's up-projections' share of the attention block's projection FLOPs (what
    Megatron-Core's mla_up_proj recompute redoes)."""
    assert model.mla is not None
    m, a = model.mla, model.num_attention_heads
    up = m.q_lora_rank * a * (m.qk_nope_head_dim + m.qk_rope_head_dim) if m.q_lora_rank else 0
    up += m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim)
    total = qkv_flops(model, 1) / 2 + out_proj_flops(model, 1) / 2
    return float(up / total)


def _shape(job: Job, mesh: Mesh) -> tuple[BatchShape, LayerDegrees]:
    P = mesh.plans
    return BatchShape.training(P.mbs, job.seq_len, P.cp), LayerDegrees.of(mesh)


def _recompute(model: Model, P: PlanArrays, forward: np.ndarray,
               selective: np.ndarray | float) -> np.ndarray:
    """The forward redone per layer: all of it for the fully recomputed share of the layers
    (`recompute.full_share`), the selected modules' under selective recompute."""
    return np.where(P.recompute == 2, full_share(P, model.num_layers) * forward,
                    np.where(P.recompute == 1, selective, 0.0))


def attention_times(model: Model, job: Job, K: Kernels, mesh: Mesh) -> AttentionTimes:
    """Attention block: QKV and output GEMMs, the attention core, norms/residual/RoPE.

    Under context parallelism the fused core runs as cp ring steps on smaller blocks, at
    `collectives.cp_block_efficiency` of the calibrated rate (1 at cp = 1)."""
    shape, deg = _shape(job, mesh)
    block = cp_block_efficiency(job.seq_len, mesh.plans.cp)
    parts = attention_parts(model, K, shape, deg, fused=job.flash_attention,
                            block_efficiency=block)
    core_b: np.ndarray | float
    if job.flash_attention:
        core_b = K.attention(2 * attention_core_flops(model, shape.causal_pairs, deg.tp),
                             backward=True, block_efficiency=block)
    else:
        core_b = 2 * parts.core
    fwd = parts.time(K)
    scores_b = 0.0 if job.flash_attention else unfused_score_bytes(
        model, model.num_attention_heads / deg.tp * shape.dense_pairs, backward=True)
    bwd_i = parts.gemm + core_b + K.memory(2 * parts.elementwise_bytes + scores_b) + K.overhead
    # Selective recompute by module (`train.recompute`; what each drops:
    # train.memory.attention_activation_bytes): the attention core with its softmax passes,
    # the input norm, MLA's up-projections (their share of the QKV and output GEMMs' FLOPs).
    T, sp = shape.tokens, deg.seq_shard
    mods = module_masks(mesh.plans, job)
    selective = np.where(rebuilds(mods, "core_attn"), parts.core + K.memory(parts.score_bytes),
                         0.0) \
        + np.where(rebuilds(mods, "layernorm"), K.memory(NORM_BYTES * T * model.hidden_size / sp),
                   0.0)
    if model.mla is not None:
        up = _mla_up_proj_share(model)
        selective = selective + np.where(rebuilds(mods, "mla_up_proj"), up * parts.gemm, 0.0)
    zero = np.zeros_like(fwd)
    return AttentionTimes(fwd, bwd_i, parts.gemm, _recompute(model, mesh.plans, fwd, selective),
                          parts.core + zero, core_b + zero)


def mlp_times(model: Model, job: Job, K: Kernels, mesh: Mesh, moe: bool) -> PassTimes:
    """MLP block of a dense layer, or the routed + shared experts of a MoE layer."""
    shape, deg = _shape(job, mesh)
    parts = mlp_parts(model, K, shape, deg, moe, dispatcher=ALLTOALL)
    fwd = parts.time(K)
    bwd_i = parts.gemm + K.memory(2 * parts.elementwise_bytes) + K.overhead * (1 + parts.launches)
    # Selective recompute by module (`train.recompute`): the pre-MLP norm, the activation
    # function (a dense MLP's with the block's other element-wise passes; a MoE block's
    # routed experts' only, Megatron-Core `moe_act` redoing neither the router nor the
    # permutations), the whole block (mlp / moe: its forward; the EP all-to-all a recomputed
    # MoE layer repeats is not counted), the shared experts (their share of the expert GEMM
    # FLOPs).
    mods = module_masks(mesh.plans, job)
    norm = K.memory(NORM_BYTES * shape.tokens * model.hidden_size / deg.seq_shard)
    act = parts.activation_bytes if moe else parts.elementwise_bytes
    selective = np.where(rebuilds(mods, "layernorm"), norm, 0.0) \
        + np.where(rebuilds(mods, "moe_act" if moe else "dense_act"), K.memory(act), 0.0)
    selective = np.where(rebuilds(mods, "moe" if moe else "mlp"), fwd, selective)
    if moe and model.moe is not None and model.moe.num_shared_experts:
        m = model.moe
        shared = m.num_shared_experts * m.shared_expert_ffn_hidden_size
        share = shared / (shared + m.top_k * m.expert_ffn_hidden_size)
        # (already inside the whole block when "moe" is listed too)
        shared_only = rebuilds(mods, "shared_experts") & ~rebuilds(mods, "moe")
        selective = selective + np.where(shared_only, share * parts.gemm, 0.0)
    return PassTimes(fwd, bwd_i, parts.gemm, _recompute(model, mesh.plans, fwd, selective))


def head_times(model: Model, job: Job, K: Kernels, mesh: Mesh) -> PassTimes:
    """Final norm, LM head GEMM and vocab-parallel cross-entropy (last pipeline stage)."""
    shape, deg = _shape(job, mesh)
    T = shape.tokens
    parts = head_parts(model, K, T, deg)
    logits = T * model.vocab_size / deg.tp
    fwd = parts.gemm + K.memory(parts.elementwise_bytes + CE_FORWARD_BYTES * logits)
    bwd_i = parts.gemm + K.memory(2 * parts.elementwise_bytes + CE_BACKWARD_BYTES * logits)
    return PassTimes(fwd, bwd_i, parts.gemm, np.zeros_like(fwd))


def mtp_projection_times(model: Model, job: Job, K: Kernels, mesh: Mesh) -> PassTimes:
    """A multi-token-prediction module's norms and 2h -> h projection (its layer and head are
    the model's own: `step._with_mtp`)."""
    shape, deg = _shape(job, mesh)
    parts = mtp_projection_parts(model, K, shape.tokens, deg)
    fwd = parts.time(K)
    bwd_i = parts.gemm + K.memory(2 * parts.elementwise_bytes) + K.overhead
    return PassTimes(fwd, bwd_i, parts.gemm, np.zeros_like(fwd))


def embedding_times(model: Model, job: Job, K: Kernels, mesh: Mesh) -> PassTimes:
    """Token embedding gather (first stage) and its scatter-add gradient."""
    shape, deg = _shape(job, mesh)
    gather = embedding_bytes(model, shape.tokens, deg)
    fwd = K.memory(gather)
    return PassTimes(fwd, np.zeros_like(fwd), K.memory(2 * gather), np.zeros_like(fwd))
