"""Compute time of one transformer layer (and the end-stage extras) on one GPU.

Roofline per kernel: a GEMM takes FLOPs / (peak x efficiency(GEMM FLOPs)), the fused attention
kernel FLOPs / (peak x attention efficiency), element-wise kernels bytes / (HBM bandwidth x
memory efficiency) (Williams, Waterman & Patterson, "Roofline", CACM 2009; per-size GEMM
efficiency as in Calculon, Isaev et al. SC23). The backward pass of a linear layer is two GEMMs
of the forward's size: input gradient (I) and weight gradient (W), as split by Zero Bubble
(Qi et al. 2024).

Element-wise traffic per layer, forward (bytes; T = tokens on this GPU, sp = t with sequence
parallel else 1; backward moves twice as much): norms 2 x 4Th/sp, residual adds 2 x 6Th/sp,
dropout 2 x 5Th/sp, RoPE 4T(a+k)d/t, activation 6Tf/t (gated) or 4Tf/t, unfused softmax
(4 + 5 with dropout) b a s^2/(t c), MoE permutation 8 T K h / t, FP8 casts 3 bytes per GEMM
input element. These counts are meshplan's (one read and one write per tensor per kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import flops as F
from meshplan.specs.cluster import Cluster
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


class Kernels:
    """Time of GEMMs, attention and element-wise kernels on one accelerator."""

    def __init__(self, cluster: Cluster, job: Job):
        acc, cal = cluster.accelerator, cluster.calibration
        self.gemm_peak = acc.peak(job.precision)
        curve = acc.gemm_curve(job.precision)
        self.gemm_eff = lambda flops: np.minimum(curve(flops) * cal.gemm_scale, 1.0)
        self.attn_peak = acc.peak("bf16")
        self.attn_eff = min(acc.attention_efficiency * cal.attention_scale, 1.0)
        self.attn_bwd_eff = min(acc.attention_backward_efficiency * cal.attention_scale, 1.0)
        self.mem_bw = acc.memory_bandwidth * acc.memory_efficiency
        self.overhead = cluster.kernel_overhead

    def gemm(self, flops: np.ndarray, count: float | np.ndarray = 1.0) -> np.ndarray:
        """`count` GEMMs of `flops` each."""
        return count * flops / (self.gemm_peak * self.gemm_eff(flops))

    def memory(self, nbytes: np.ndarray | float) -> np.ndarray:
        return np.asarray(nbytes, dtype=float) / self.mem_bw


def _unfused_softmax_bytes(model: Model, b: np.ndarray, s: int, t: np.ndarray,
                           c: np.ndarray) -> np.ndarray:
    per_elem = 4.0 + (5.0 if model.dropout else 0.0)
    return per_elem * b * model.num_attention_heads / t * (s / c) * s


def attention_times(model: Model, job: Job, K: Kernels, P: PlanArrays) -> PassTimes:
    """Attention block: QKV and output GEMMs, the attention core, norms/residual/RoPE."""
    b, t, c, s = P.mbs, P.tp, P.cp, job.seq_len
    T = b * s / c
    sp = np.where(P.sp, t, 1)
    h, d = model.hidden_size, model.head_size
    gemm = K.gemm(F.qkv_flops(model, T) / t) + K.gemm(F.out_proj_flops(model, T) / t)
    core = F.attention_core_flops(model, b, s) / (c * t)
    if job.flash_attention:
        # Causal flash attention skips the masked half of the score matrix.
        core_f = 0.5 * core / (K.attn_peak * K.attn_eff)
        core_b = 2 * 0.5 * core / (K.attn_peak * K.attn_bwd_eff)
        softmax: float | np.ndarray = 0.0
    else:
        # Unfused attention runs one batched GEMM pair per (sequence, head): its efficiency is
        # that of a single head's s x s x d GEMM.
        per_head = core / (2 * b * model.num_attention_heads / t)
        core_f = K.gemm(per_head, 2 * b * model.num_attention_heads / t)
        core_b = 2 * core_f
        softmax = _unfused_softmax_bytes(model, b, s, t, c)
    elem = (4 + 6 + (5 if model.dropout else 0)) * T * h / sp
    if model.position_embedding == "rope":
        elem = elem + 4 * T * (model.num_attention_heads + model.kv_heads) * d / t
    if job.precision == "fp8":
        elem = elem + 3 * T * (h + model.num_attention_heads * F.value_head_dim(model) / t)
    fwd = gemm + core_f + K.memory(elem + softmax) + K.overhead
    bwd_w = gemm
    bwd_i = gemm + core_b + K.memory(2 * (elem + softmax)) + K.overhead
    # Selective recompute: the attention core when unfused (Korthikanti et al. 2022), the
    # pre-attention norm when fused (see memory.attention_activation_bytes).
    selective = core_f + K.memory(softmax) if not job.flash_attention else K.memory(4 * T * h / sp)
    return PassTimes(fwd, bwd_i, bwd_w, _recompute(P, fwd, selective))


def _recompute(P: PlanArrays, forward: np.ndarray, selective: np.ndarray | float) -> np.ndarray:
    return np.where(P.recompute == 2, forward, np.where(P.recompute == 1, selective, 0.0))


def _mlp_gemms(model: Model, K: Kernels, tokens: np.ndarray, ffn: float, split: np.ndarray,
               count: float | np.ndarray = 1.0) -> np.ndarray:
    """fc1 (gate and up fused when gated) and fc2 of `count` MLPs on `tokens` tokens each."""
    h = model.hidden_size
    up = 2 * tokens * h * ffn * (2 if model.gated else 1) / split
    down = 2 * tokens * h * ffn / split
    return K.gemm(up, count) + K.gemm(down, count)


def _mlp_elementwise(model: Model, tokens: np.ndarray, ffn: float, split: np.ndarray) -> np.ndarray:
    per = 6.0 if model.gated else 4.0
    return per * tokens * ffn / split


def mlp_times(model: Model, job: Job, K: Kernels, P: PlanArrays, moe: bool) -> PassTimes:
    """MLP block of a dense layer, or the routed + shared experts of a MoE layer."""
    b, t, c, s, h = P.mbs, P.tp, P.cp, job.seq_len, model.hidden_size
    T = b * s / c
    sp = np.where(P.sp, t, 1)
    elem: np.ndarray | float = 0.0  # norms and residuals are counted in attention_times
    if not moe:
        gemm = _mlp_gemms(model, K, T, model.ffn_hidden_size, t)
        elem = elem + _mlp_elementwise(model, T, model.ffn_hidden_size, t)
        fp8_inputs = T * h + T * model.ffn_hidden_size / t
    else:
        assert model.moe is not None
        m = model.moe
        # Tokens an expert-tensor group processes; per local expert, assignments arrive from
        # all ep ranks (balanced routing, as the NVIDIA tables force-balance).
        tokens_g = T * P.etp / t
        per_expert = tokens_g * m.top_k * P.ep / m.num_experts
        gemm = _mlp_gemms(model, K, per_expert, m.expert_ffn_hidden_size, P.etp,
                          count=m.num_experts / P.ep)
        elem = elem + _mlp_elementwise(model, tokens_g * m.top_k, m.expert_ffn_hidden_size, P.etp)
        elem = elem + 8 * T * m.top_k * h / t
        gemm = gemm + K.gemm(2 * T / sp * h * m.num_experts)
        if m.num_shared_experts:
            f_sh = m.num_shared_experts * m.shared_expert_ffn_hidden_size
            gemm = gemm + _mlp_gemms(model, K, T, f_sh, t)
            elem = elem + _mlp_elementwise(model, T, f_sh, t)
        fp8_inputs = (T + tokens_g * m.top_k) * h
    if job.precision == "fp8":
        elem = elem + 3 * fp8_inputs
    fwd = gemm + K.memory(elem) + K.overhead
    bwd_i = gemm + K.memory(2 * elem) + K.overhead
    # Selective recompute with fused attention redoes the norm and the activation function.
    selective = K.memory(4 * T * h / sp + elem) if job.flash_attention else 0.0
    return PassTimes(fwd, bwd_i, gemm, _recompute(P, fwd, selective))


def head_times(model: Model, job: Job, K: Kernels, P: PlanArrays) -> PassTimes:
    """Final norm, LM head GEMM and vocab-parallel cross-entropy (last pipeline stage)."""
    t, T = P.tp, P.mbs * job.seq_len / P.cp
    sp = np.where(P.sp, t, 1)
    gemm = K.gemm(F.head_flops(model, T) / t)
    logits = T * model.vocab_size / t
    fwd = gemm + K.memory(4 * T * model.hidden_size / sp + CE_FORWARD_BYTES * logits)
    bwd_i = gemm + K.memory(8 * T * model.hidden_size / sp + CE_BACKWARD_BYTES * logits)
    return PassTimes(fwd, bwd_i, gemm, np.zeros_like(fwd))


def embedding_times(model: Model, job: Job, K: Kernels, P: PlanArrays) -> PassTimes:
    """Token embedding gather (first stage) and its scatter-add gradient."""
    T = P.mbs * job.seq_len / P.cp
    sp = np.where(P.sp, P.tp, 1)
    fwd = K.memory(4 * T * model.hidden_size / sp)
    return PassTimes(fwd, np.zeros_like(fwd), K.memory(8 * T * model.hidden_size / sp),
                     np.zeros_like(fwd))
