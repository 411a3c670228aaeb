"""Memory as PyTorch's CUDA caching allocator and the process see it, on top of what the model
holds (`cost.train.memory`): transient peaks, communication buffers, workspaces, the
allocator's reserve and the memory outside the allocator. Vectorised over plans.

What the sources report is `torch.cuda.max_memory_reserved()` (torchtitan's `max_reserved`,
Megatron's "max reserved") or `max_memory_allocated()`: `reported` turns the breakdown into
either. The CUDA context and NCCL's own buffers are cudaMalloc'ed outside the caching
allocator (PyTorch docs, "CUDA semantics > Memory management": memory_reserved counts only the
allocator's segments), so they count for whether a plan fits but not for the reported figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from meshplan.mesh import Mesh
from meshplan.specs.job import Job
from meshplan.specs.model import Model

MIB = 2**20

LOSS_BYTES = {"upcast": (4.0, 8.0), "vocab_parallel": (4.0, 2.0), "fused": (2.0, 0.0)}
"""Bytes per logit (saved for backward, live on top of that while the loss runs) by
`Job.loss_kernel`. upcast: torchtitan `cross_entropy_loss` = `F.cross_entropy(pred.float())`,
which is log_softmax (saves its fp32 output) + nll_loss; its backward holds nll_loss's fp32
gradient (4) and log_softmax's fp32 input gradient (4) beside the saved output, more than the
forward's bf16 logits (2) and fp32 upcast (4). vocab_parallel: Megatron
`vocab_parallel_cross_entropy(logits.float())` exponentiates the fp32 upcast in place and
saves it; the bf16 logits (2) are live during the cast. fused: flash-attn
`CrossEntropyLoss(inplace_backward=True)` keeps the bf16 logits and writes the gradient into
them. At the vocabulary size this is the largest transient of a step."""

FSDP_PREFETCH_LAYERS = 2
"""Unsharded layers live under ZeRO-3/FSDP: the one computing and the one prefetched
(FSDP2's implicit forward/backward prefetch of one module)."""
ZERO3_MAX_LIVE_PARAMETERS = 1e9
"""At most this many gathered parameters per GPU (DeepSpeed `stage3_max_live_parameters`
default): DeepSpeed gathers per sub-module, so a layer larger than this is never whole."""

DDP_BUCKET_BYTES = 25 * MIB
"""Gradient bucket of data-parallel all-reduce/reduce-scatter (torch DDP `bucket_cap_mb=25`);
two live: one reducing, one filling."""

CUBLAS_WORKSPACE_BYTES = 32 * MIB
"""cuBLAS workspace per stream, allocated through the caching allocator (PyTorch
`CUBLAS_WORKSPACE_CONFIG` default on Hopper ":4096:8" = 8 x 4 MiB; 4 MiB x 2 + 16 KiB x 8 on
older parts)."""
WORKSPACE_STREAMS = 2
"""Streams that run GEMMs: compute and one communication-overlap stream (meshplan assumption)."""

NCCL_BUFFSIZE = 4 * MIB
"""NCCL_BUFFSIZE default (NCCL environment-variable docs), per channel and peer."""
NCCL_CHANNELS = 16
"""Channels per communicator (NCCL picks 2-32 by topology; meshplan assumption)."""
NCCL_COMMUNICATOR_BYTES = 2 * NCCL_CHANNELS * NCCL_BUFFSIZE
"""Send and receive buffers of one communicator (ring: one peer each way)."""

FRAGMENTATION_SHARE = 0.10
"""Reserved over allocated for the per-step (DYNAMIC) allocations with the default allocator:
blocks split inside 2 MiB / 20 MiB segments and cached free blocks of other sizes cannot be
merged or returned (PyTorch docs, "CUDA semantics > Memory management" and
"Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF"). A meshplan assumption, not fitted to
the shipped runs (docs/validation.md, peak memory)."""
EXPANDABLE_SHARE = 0.03
"""The same with `expandable_segments:True`: one growing segment per stream, so only the
2 MiB page rounding and freed pages not yet reused remain (meshplan assumption)."""

DYNAMIC = ("activations", "buffers", "zero_buffers", "logits")
"""Terms allocated and freed every step: the fragmentation is a share of these. Weights,
gradients and optimizer states are allocated once, at their exact sizes (Megatron's contiguous
param/grad buffers, FSDP2's flat shards), so they leave no holes between blocks."""
OUTSIDE_ALLOCATOR = ("nccl", "cuda_context")
"""Breakdown terms the caching allocator does not see (not in memory_reserved)."""
ALLOCATOR_RESERVE = ("fragmentation",)
"""Terms in memory_reserved but not in memory_allocated."""


def loss_transient_bytes(model: Model, job: Job, mesh: Mesh) -> np.ndarray:
    """Transient bytes of the loss on the rank holding the LM head (one micro-batch)."""
    T = mesh.tokens_per_microbatch(job.seq_len)
    return LOSS_BYTES[job.loss_kernel][1] * T * model.vocab_size / mesh.plans.tp


def zero_buffers(job: Job, mesh: Mesh, layer_params: np.ndarray | float,
                 rank_params: np.ndarray) -> np.ndarray:
    """ZeRO/FSDP and data-parallel buffers on one GPU.

    ZeRO-3: FSDP_PREFETCH_LAYERS unsharded bf16 layers plus one layer's unsharded gradient
    before its reduce-scatter. With pipeline parallelism torchtitan keeps the stage's weights
    unsharded between micro-batches (`reshard_after_forward = not pp_enabled`) and
    torch.distributed.pipelining reduce-scatters only on the last micro-batch
    (`set_requires_gradient_sync(last_backward)`), so the whole stage's unsharded weights and
    gradients are live. ZeRO 0-2 with data parallelism: the gradient buckets.
    """
    P = mesh.plans
    live = np.minimum(FSDP_PREFETCH_LAYERS * layer_params / P.tp, ZERO3_MAX_LIVE_PARAMETERS)
    per_layer = 2.0 * live + job.grad_bytes * live / FSDP_PREFETCH_LAYERS
    whole_stage = (2.0 + job.grad_bytes) * rank_params
    zero3 = np.where(P.pp > 1, whole_stage, per_layer)
    buckets = np.where(P.dp * P.cp > 1, 2.0 * DDP_BUCKET_BYTES, 0.0)
    return np.where(P.zero >= 3, zero3, buckets)


def nccl_bytes(mesh: Mesh) -> np.ndarray:
    """NCCL buffers: one communicator per parallel axis larger than one, plus the world's."""
    P = mesh.plans
    comms = 1 + sum((getattr(P, axis) > 1).astype(float) for axis in ("tp", "cp", "ep", "dp",
                                                                     "pp"))
    return comms * NCCL_COMMUNICATOR_BYTES


def workspace_bytes(n: int) -> np.ndarray:
    return np.full(n, WORKSPACE_STREAMS * CUBLAS_WORKSPACE_BYTES, dtype=float)


def fragmentation_share(job: Job) -> float:
    return EXPANDABLE_SHARE if job.expandable_segments else FRAGMENTATION_SHARE


def fragmentation(terms: Mapping[str, np.ndarray | float], share: float | np.ndarray
                  ) -> np.ndarray | float:
    """The allocator's reserve over its allocated peak: `share` of the DYNAMIC terms."""
    return share * sum((terms[k] for k in DYNAMIC), start=0.0)  # type: ignore[arg-type]


def reported(memory: Mapping[str, float],
             kind: Literal["reserved", "allocated"] = "reserved") -> float:
    """The peak the way PyTorch's statistics report it: max_memory_reserved (default) or
    max_memory_allocated, from an Estimate's memory breakdown."""
    out = memory["peak"] - sum(memory.get(k, 0.0) for k in OUTSIDE_ALLOCATOR)
    if kind == "allocated":
        out -= sum(memory.get(k, 0.0) for k in ALLOCATOR_RESERVE)
    return float(out)
