"""Step time, memory and utilisation of many training plans at once (the analytic estimate).

Composition (all per optimizer step, one GPU):
    step = pipeline(F, B per micro-batch and rank, with exposed TP/CP/EP/PP communication)
           + exposed data-parallel / ZeRO traffic + optimizer step
Each term's formula and source sits in its module (layer core, passes, comm, memory,
pipeline, optimizer); this one only adds them up. MFU is model FLOPs / (time x GPUs x dense
bf16 peak) with attention's causal half (`flops.step_flops`); HFU counts what the kernels
execute, recomputation included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import flops as F
from meshplan.cost.kernels import Kernels
from meshplan.cost.params import count_params
from meshplan.cost.train import comm
from meshplan.cost.train.memory import RANK_POSITIONS, layer_mix, rank_layout, step_memory
from meshplan.cost.train.optimizer import optimizer_time
from meshplan.cost.train.passes import (
    PassTimes,
    attention_times,
    embedding_times,
    head_times,
    mlp_times,
    mtp_projection_times,
)
from meshplan.cost.train.pipeline import head_rank, pipeline_time
from meshplan.cost.train.recompute import full_share
from meshplan.cost.train.stages import StageTimes
from meshplan.mesh import Mesh
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import PlanArrays
from meshplan.specs.stages import rank_layers

TIME_TERMS = ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_comm", "bubble", "dp_comm",
              "optimizer")
MEMORY_TERMS = ("weights", "gradients", "optimizer", "activations", "buffers", "zero_buffers",
                "logits", "workspace", "fragmentation", "nccl", "cuda_context")
"""What the model holds (weights .. activations), the transient and allocator-side terms
(`cost.train.allocator`), and the memory outside the allocator (nccl, cuda_context)."""
STATIC_TERMS = ("weights", "gradients", "optimizer", "activations", "buffers", "zero_buffers",
                "logits", "workspace", "nccl")
"""A rank's memory that does not depend on the schedule ('activations': the layer a full
recompute rebuilds), handed to the simulator per rank position; it adds the fragmentation
of the whole rank (`fragmentation_share`)."""


@dataclass(frozen=True)
class CostArrays:
    """Per-plan results; every field is an array with one entry per plan."""

    step_time: np.ndarray
    time: dict[str, np.ndarray]
    """Breakdown of step_time by TIME_TERMS (they add up to step_time)."""
    memory: dict[str, np.ndarray]
    """Peak-rank memory by MEMORY_TERMS plus 'peak'."""
    num_microbatches: np.ndarray
    model_flops: float
    hardware_flops: np.ndarray
    """Model FLOPs plus the recomputed forward FLOPs (HFU numerator)."""
    mfu: np.ndarray
    hfu: np.ndarray
    tokens_per_s: np.ndarray
    fits: np.ndarray
    stages: StageTimes
    """What the pipeline simulator needs per plan."""


def utilisation(flops: float | np.ndarray, step_time: float | np.ndarray,
                num_gpus: float | np.ndarray, peak: float) -> np.ndarray:
    """FLOPs over (time x GPUs x peak): MFU with model FLOPs, HFU with hardware FLOPs."""
    return np.asarray(flops / (step_time * num_gpus * peak))


def _with_mtp(model: Model, cluster: Cluster, job: Job, K: Kernels, mesh: Mesh,
              head: PassTimes, attn: PassTimes, mlp: PassTimes) -> PassTimes:
    """The LM head's stage with the multi-token-prediction modules after it: each is one
    more layer (attention and the model's MLP or MoE block, with its exposed TP and EP
    communication), its input projection (`layer.mtp_projection_parts`) and another pass
    through the shared head and loss. Megatron-Core builds them on the last pipeline stage,
    next to the loss (`--mtp-num-layers`; Megatron-Bridge's pipeline layouts end in
    'mtp', 'loss')."""
    n = len(mesh.plans)
    moe = np.full(n, 1.0 if model.is_moe else 0.0)
    tp_f, tp_b = comm.tp_exposed(model, cluster, job, mesh, moe, 1.0 - moe)
    ep_f, ep_b = comm.ep_exposed(model, cluster, job, mesh, moe, attn.forward + mlp.forward,
                                 attn.backward + mlp.backward)
    proj = mtp_projection_times(model, job, K, mesh)
    k = model.mtp_layers

    def total(pick: str, comm_time: np.ndarray | float) -> np.ndarray:
        return getattr(head, pick) + k * (getattr(attn, pick) + getattr(mlp, pick)
                                          + getattr(proj, pick) + getattr(head, pick)
                                          + comm_time)

    return PassTimes(total("forward", tp_f + ep_f), total("backward_input", tp_b + ep_b),
                     total("backward_weight", 0.0), head.recompute
                     + k * (attn.recompute + mlp.recompute))


def evaluate(model: Model, cluster: Cluster, job: Job, P: PlanArrays) -> CostArrays:
    """Cost every plan in P (degrees already legal: see `meshplan.specs.rules`)."""
    mesh = Mesh(P)
    K = Kernels(cluster, job.precision)
    counts = count_params(model)
    m = mesh.num_microbatches(job.global_batch_size)
    dense_layers, moe_layers = layer_mix(model, P)
    layers = dense_layers + moe_layers

    attn = attention_times(model, job, K, mesh)
    mlp_d = mlp_times(model, job, K, mesh, moe=False)
    mlp_m = mlp_times(model, job, K, mesh, moe=True) if model.is_moe else mlp_d

    def per_rank(pick: str) -> np.ndarray:
        return (layers * getattr(attn, pick) + dense_layers * getattr(mlp_d, pick)
                + moe_layers * getattr(mlp_m, pick))

    fwd_c, bwd_i_c, bwd_w_c, rec_c = (per_rank(x) for x in
                                      ("forward", "backward_input", "backward_weight",
                                       "recompute"))
    tp_f, tp_b = comm.tp_exposed(model, cluster, job, mesh, moe_layers, dense_layers)
    ep_f, ep_b = comm.ep_exposed(model, cluster, job, mesh, moe_layers,
                                 attn.forward + mlp_m.forward, attn.backward + mlp_m.backward)
    cp_f, cp_b = comm.cp_exposed(model, cluster, job, K, mesh, layers, attn)
    # Full recompute repeats the forward's collectives of the recomputed layers before the
    # backward (by axis, for the trace too).
    rc = full_share(P, model.num_layers)
    fwd_comm = tp_f + ep_f + cp_f
    bwd_comm = tp_b + ep_b + cp_b + rc * fwd_comm
    pass_comm = {"tp_comm": (tp_f, tp_b + rc * tp_f), "cp_comm": (cp_f, cp_b + rc * cp_f),
                 "ep_comm": (ep_f, ep_b + rc * ep_f)}
    pass_bytes = {k: (f, b + rc * f) for k, (f, b) in
                  comm.collective_bytes(model, job, mesh, moe_layers, dense_layers).items()}

    p2p = comm.pp_transfer_time(model, cluster, job, mesh)
    pp_exposed = np.where(P.pp > 1, 2 * P.vpp * p2p * (1 - cluster.overlap.pp), 0.0)

    # Everything above is for a rank holding L / p layers; uneven splits scale it per rank.
    l_first, l_mid, l_last = rank_layers(model.num_layers, P)
    even = model.num_layers / P.pp
    s_first, s_mid, s_last = l_first / even, l_mid / even, l_last / even
    unit_f, unit_i, unit_w = fwd_c + fwd_comm, bwd_i_c + rec_c + bwd_comm, bwd_w_c
    unit = unit_f + unit_i + unit_w
    F_mid, I_mid, W_mid = unit_f * s_mid, unit_i * s_mid, unit_w * s_mid
    mid = unit * s_mid + pp_exposed
    emb, head = embedding_times(model, job, K, mesh), head_times(model, job, K, mesh)
    if model.mtp_layers:
        head = _with_mtp(model, cluster, job, K, mesh, head, attn, mlp_m)
    # The LM head sits on the last stage's rank: the last rank, or the first in a V.
    head_fb = head.forward + head.backward
    head_first = head_rank(P.schedule, P.pp) == 0
    first = unit * s_first + pp_exposed + emb.forward + emb.backward \
        + np.where(head_first, head_fb, 0.0)
    last = unit * s_last + pp_exposed + np.where(head_first, 0.0, head_fb)
    single = unit + emb.forward + emb.backward + head.forward + head.backward
    first = np.where(P.pp > 1, first, single)
    pipe = pipeline_time(P.schedule, P.pp, m, P.vpp, first, mid, last, F_mid, I_mid, W_mid)

    # Data parallel, ZeRO and optimizer, on the rank holding the most parameters.
    ranks = rank_layout(counts, model, P)
    dense_p, expert_p = ranks.dense_max, ranks.expert_max
    dp = comm.dp_times(cluster, job, mesh, dense_p, expert_p, unit_f, unit_i + unit_w,
                      layers)
    dp_exposed = dp.per_step + m * dp.per_microbatch
    opt = optimizer_time(cluster, mesh, dense_p, expert_p)

    step = pipe + dp_exposed + opt
    slowest = np.maximum(np.maximum(first, last), mid)
    compute_share = m * (fwd_c + bwd_i_c + bwd_w_c + rec_c) * s_mid
    unit_terms = {"compute": fwd_c + bwd_i_c + bwd_w_c + rec_c,
                  **{k: f + b for k, (f, b) in pass_comm.items()}}
    time = {
        "compute": compute_share + m * (slowest - mid),
        "tp_comm": m * unit_terms["tp_comm"] * s_mid,
        "cp_comm": m * unit_terms["cp_comm"] * s_mid,
        "ep_comm": m * unit_terms["ep_comm"] * s_mid,
        "pp_comm": m * pp_exposed,
        "bubble": pipe - m * slowest,
        "dp_comm": dp_exposed,
        "optimizer": opt,
    }

    mem = step_memory(model, cluster, job, mesh, counts, m, ranks)
    model_flops, hw_flops = F.step_flops(model, job.global_batch_size, job.seq_len,
                                         P.recompute, job.flash_attention, rc)
    peak = cluster.accelerator.rated_peak("bf16")
    stages = StageTimes(
        unit=PassTimes(unit_f, unit_i, unit_w, np.zeros_like(unit_f)),
        unit_terms=unit_terms, pass_comm=pass_comm, pass_comm_bytes=pass_bytes,
        rank_scale=(s_first, s_mid, s_last), layers_per_rank=model.num_layers / P.pp,
        embedding=emb, head=head, p2p=p2p, p2p_bytes=comm.pp_transfer_bytes(model, job, mesh),
        p2p_blocking=1.0 - cluster.overlap.pp,
        grad_reduce=dp.grad, grad_reduce_exposed=dp.grad_exposed,
        grad_reduce_overlap=np.where(P.overlap_grad, cluster.overlap.dp, 0.0),
        activation_bytes=mem.pop("activations_per_microbatch"),
        head_activation_bytes=mem.pop("head_activations"),
        static_memory=tuple({key: mem.pop(f"static_{k}_{key}") for key in STATIC_TERMS}
                            for k in RANK_POSITIONS),
        fragmentation_share=mem.pop("fragmentation_share"),
    )
    return CostArrays(
        step_time=step,
        time=time,
        memory=mem,
        num_microbatches=m,
        model_flops=model_flops,
        hardware_flops=hw_flops,
        mfu=utilisation(model_flops, step, mesh.num_gpus, peak),
        hfu=utilisation(hw_flops, step, mesh.num_gpus, peak),
        tokens_per_s=job.tokens_per_step / step,
        fits=mem["peak"] <= cluster.accelerator.memory_bytes,
        stages=stages,
    )
