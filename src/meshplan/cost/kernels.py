"""Time of one kernel on one accelerator: GEMMs, fused attention, element-wise traffic.

Roofline (Williams, Waterman & Patterson, "Roofline", CACM 2009): a kernel takes the larger of
its FLOPs over the achieved FLOP rate and its HBM bytes over the achieved bandwidth. The GEMM
FLOP rate depends on the GEMM's size (per-size efficiency as in Calculon, Isaev et al. SC23);
a decode GEMM (a few tokens against a whole weight matrix) is bound by reading the weights.
All efficiency figures come from the cluster data (`Accelerator`, `Calibration`).
"""

from __future__ import annotations

import numpy as np

from meshplan.specs.cluster import Cluster

Num = float | np.ndarray

ACTIVATION_BYTES = 2.0
"""bf16 activations in and out of every GEMM."""

ATTENTION_HALF_KEYS = 230.0
"""Keys per query block at which a fused attention kernel runs at half its long-sequence rate:
its per-tile fixed work (loading Q, rescaling and writing O) is amortised over the key loop,
so the rate goes as keys / (keys + ATTENTION_HALF_KEYS). Fitted to FlashAttention-3's forward
on H100 (d = 128, non-causal, batch x seqlen = 16k so the tile count is fixed; pytorch/benchmark
PR #2391): 430, 517, 566, 590, 614, 621 TFLOP/s at 512, 1k, ..., 16k keys; with a 629 TFLOP/s
asymptote the rule is within 0.9 % of each (the minimax fit)."""


def attention_key_efficiency(keys: Num) -> np.ndarray:
    """Share of its long-sequence rate a fused attention kernel reaches when each query block
    loops over `keys` keys (`ATTENTION_HALF_KEYS`)."""
    k = np.asarray(keys, dtype=float)
    return k / (k + ATTENTION_HALF_KEYS)


def weight_bytes_per_element(precision: str) -> float:
    """Bytes of one weight element a GEMM reads: FP8 GEMMs read FP8 weights, others 16-bit."""
    return 1.0 if precision == "fp8" else 2.0


def linear_bytes(tokens: Num, weight_elements: Num, d_in: Num, d_out: Num,
                 weight_bytes: float) -> Num:
    """HBM bytes of one linear layer: its weights once, its input and output activations."""
    return weight_bytes * weight_elements + ACTIVATION_BYTES * tokens * (d_in + d_out)


class Kernels:
    """Kernel times on one accelerator at one GEMM precision."""

    def __init__(self, cluster: Cluster, precision: str):
        acc, cal = cluster.accelerator, cluster.calibration
        self.precision = precision
        self.weight_bytes = weight_bytes_per_element(precision)
        self.gemm_peak = acc.peak(precision)
        curve = acc.gemm_curve(precision)
        # Physical limits: no kernel runs above the measured maximum achievable matmul share
        # (MAMF, the top of the catalog's GEMM curve; Bekman, "Maximum Achievable Matmul
        # FLOPS"), nor above the roofline. A fitted scale says how far real shapes and software
        # fall below the curve; a scale > 1 may lift small GEMMs but never past that top.
        # Attention's score and value GEMMs run on the same tensor cores at bf16, so its
        # efficiency is bounded by the bf16 MAMF.
        self.mamf = min(max(curve.y), 1.0)
        scale = cal.gemm_scale_for(precision)  # per precision and FP8 recipe (calibration)
        self.gemm_eff = lambda flops: np.minimum(curve(flops) * scale, self.mamf)
        self.attn_peak = acc.peak("bf16")
        attn_mamf = min(max(acc.gemm_curve("bf16").y), 1.0)
        self.attn_eff = min(acc.attention_efficiency * cal.attention_scale, attn_mamf)
        self.attn_bwd_eff = min(acc.attention_backward_efficiency * cal.attention_scale,
                                attn_mamf)
        self.mem_bw = acc.memory_bandwidth * acc.memory_efficiency
        self.overhead = cluster.kernel_overhead

    def gemm(self, flops: Num, count: Num = 1.0, nbytes: Num = 0.0) -> np.ndarray:
        """`count` GEMMs of `flops` each moving `nbytes` each: the slower of compute and HBM."""
        compute = count * flops / (self.gemm_peak * self.gemm_eff(flops))
        return np.maximum(compute, count * np.asarray(nbytes) / self.mem_bw)

    def attention(self, flops: Num, nbytes: Num = 0.0, backward: bool = False,
                  block_efficiency: Num = 1.0) -> np.ndarray:
        """Fused (flash) attention core: FLOPs at the kernel's efficiency, floored by the
        bytes it streams (queries, outputs and the K/V it reads). `block_efficiency` scales
        the rate when the kernel runs on smaller blocks than its calibration (ring attention's
        steps: `attention_key_efficiency`)."""
        eff = self.attn_bwd_eff if backward else self.attn_eff
        return np.maximum(flops / (self.attn_peak * eff * block_efficiency),
                          np.asarray(nbytes) / self.mem_bw)

    def memory(self, nbytes: Num) -> np.ndarray:
        """Element-wise kernels: bytes over the achieved HBM bandwidth."""
        return np.asarray(nbytes, dtype=float) / self.mem_bw
