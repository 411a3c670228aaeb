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
)
from meshplan.cost.moe import ALLTOALL
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


def _shape(job: Job, mesh: Mesh) -> tuple[BatchShape, LayerDegrees]:
    P = mesh.plans
    return BatchShape.training(P.mbs, job.seq_len, P.cp), LayerDegrees.of(mesh)


def _recompute(P: PlanArrays, forward: np.ndarray, selective: np.ndarray | float) -> np.ndarray:
    return np.where(P.recompute == 2, forward, np.where(P.recompute == 1, selective, 0.0))


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
    elem = parts.elementwise_bytes + parts.score_bytes
    bwd_i = parts.gemm + core_b + K.memory(2 * elem) + K.overhead
    # Selective recompute: the attention core when unfused (Korthikanti et al. 2022), the
    # pre-attention norm when fused (see train.memory.attention_activation_bytes).
    T, sp = shape.tokens, deg.seq_shard
    selective = (parts.core + K.memory(parts.score_bytes) if not job.flash_attention
                 else K.memory(4 * T * model.hidden_size / sp))
    zero = np.zeros_like(fwd)
    return AttentionTimes(fwd, bwd_i, parts.gemm, _recompute(mesh.plans, fwd, selective),
                          parts.core + zero, core_b + zero)


def mlp_times(model: Model, job: Job, K: Kernels, mesh: Mesh, moe: bool) -> PassTimes:
    """MLP block of a dense layer, or the routed + shared experts of a MoE layer."""
    shape, deg = _shape(job, mesh)
    parts = mlp_parts(model, K, shape, deg, moe, dispatcher=ALLTOALL)
    fwd = parts.time(K)
    bwd_i = parts.gemm + K.memory(2 * parts.elementwise_bytes) + K.overhead * (1 + parts.launches)
    # Selective recompute with fused attention redoes the norm and the activation function.
    selective = (K.memory(4 * shape.tokens * model.hidden_size / deg.seq_shard
                          + parts.elementwise_bytes) if job.flash_attention else 0.0)
    return PassTimes(fwd, bwd_i, parts.gemm, _recompute(mesh.plans, fwd, selective))


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
