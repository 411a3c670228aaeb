"""Exposed communication of a training step: per micro-batch (TP, CP, EP, PP) and per step
(data parallel, ZeRO/FSDP), after the overlap the engine achieves (`Cluster.overlap`, data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import comm
from meshplan.cost.collectives import (
    cp_kv_bytes,
    cp_ring_time,
    ep_all_to_all_bytes,
    ep_dispatch_combine_time,
    tp_block_bytes,
    tp_block_time,
    tp_blocks_per_layer,
)
from meshplan.cost.train.passes import PassTimes
from meshplan.mesh import Group, Mesh
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model

ACTIVATION_BYTES = 2.0


def tp_exposed(model: Model, cluster: Cluster, job: Job, mesh: Mesh, moe_layers: np.ndarray,
               dense_layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exposed TP collective time per micro-batch on one rank: (forward, backward).

    Without tp_comm_overlap the backward hides `tp_backward` of its collectives behind the
    weight-gradient GEMMs (Megatron's async all-reduce of the input gradient); with it both
    passes hide `tp_overlapped` (userbuffers / async TP).
    """
    P = mesh.plans
    per_block = tp_block_time(cluster, mesh.members(cluster, Group.TP),
                              mesh.tokens_per_microbatch(job.seq_len), model.hidden_size, P.sp)
    total = _tp_blocks(mesh, moe_layers, dense_layers) * per_block
    ov = cluster.overlap
    fwd = total * np.where(P.tp_overlap, 1 - ov.tp_overlapped, 1.0)
    bwd = total * np.where(P.tp_overlap, 1 - ov.tp_overlapped, 1 - ov.tp_backward)
    return fwd, bwd


def _tp_blocks(mesh: Mesh, moe_layers: np.ndarray, dense_layers: np.ndarray) -> np.ndarray:
    P = mesh.plans
    return np.asarray(tp_blocks_per_layer(False, True) * dense_layers
                      + tp_blocks_per_layer(True, P.etp == P.tp) * moe_layers)


def ep_exposed(model: Model, cluster: Cluster, job: Job, mesh: Mesh,
               moe_layers: np.ndarray) -> np.ndarray:
    """Exposed expert all-to-all per pass (forward or backward) of one micro-batch."""
    P = mesh.plans
    if model.moe is None:
        return np.zeros(len(P))
    tokens = mesh.tokens_per_microbatch(job.seq_len) / mesh.seq_shard
    exposed = np.where(P.ep_overlap, 1 - cluster.overlap.ep_overlapped, 1.0)
    return moe_layers * ep_dispatch_combine_time(cluster, mesh.members(cluster, Group.EP),
                                                 model, tokens) * exposed


def cp_exposed(model: Model, cluster: Cluster, job: Job, mesh: Mesh, layers: np.ndarray,
               attn: PassTimes) -> tuple[np.ndarray, np.ndarray]:
    """Ring attention's K/V exchange left over after hiding `overlap.cp` of the attention
    kernel behind it; the backward sends K/V and their gradients."""
    P = mesh.plans
    tier = mesh.tier_index(cluster, Group.CP)
    kv = cp_kv_bytes(model, mesh.tokens_per_microbatch(job.seq_len), P.tp)
    hide = cluster.overlap.cp
    fwd = np.maximum(cp_ring_time(cluster, tier, P.cp, kv) - hide * attn.forward, 0.0)
    bwd = np.maximum(cp_ring_time(cluster, tier, P.cp, 2 * kv) - hide * attn.backward_input,
                     0.0)
    return layers * fwd, layers * bwd


def collective_bytes(model: Model, job: Job, mesh: Mesh, moe_layers: np.ndarray,
                     dense_layers: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bytes the TP, CP and EP collectives of one micro-batch carry on one GPU of a rank
    holding L / p layers, (forward, backward), before any overlap: the messages the times
    above price (for traces; the backward sends what the forward did, CP's ring also the K/V
    gradients). An axis of degree 1 carries nothing."""
    P = mesh.plans
    tokens = mesh.tokens_per_microbatch(job.seq_len)
    tp = np.where(P.tp > 1, _tp_blocks(mesh, moe_layers, dense_layers)
                  * tp_block_bytes(tokens, model.hidden_size, P.sp), 0.0)
    cp = (P.cp - 1) * (moe_layers + dense_layers) * cp_kv_bytes(model, tokens, P.tp)
    ep = np.zeros(len(P)) if model.moe is None else np.where(
        P.ep > 1, 2 * moe_layers * ep_all_to_all_bytes(model, tokens / mesh.seq_shard), 0.0)
    return {"tp_comm": (tp, tp), "cp_comm": (cp, 2 * cp), "ep_comm": (ep, ep)}


def pp_transfer_bytes(model: Model, job: Job, mesh: Mesh) -> np.ndarray:
    """One micro-batch's activation (or its gradient) between pipeline stages, per GPU: with
    Megatron's scatter/gather optimisation (Narayanan et al. 2021 Sec. 4.1) each of the t
    ranks sends 1/t of it over its own NIC, then an NVLink all-gather rebuilds it."""
    return np.asarray(ACTIVATION_BYTES * mesh.tokens_per_microbatch(job.seq_len)
                      * model.hidden_size / mesh.plans.tp)


def pp_transfer_time(model: Model, cluster: Cluster, job: Job, mesh: Mesh) -> np.ndarray:
    """One activation (or gradient) transfer between pipeline stages (`pp_transfer_bytes`)."""
    return comm.p2p_time(cluster, mesh.tier_index(cluster, Group.PP),
                         pp_transfer_bytes(model, job, mesh))


@dataclass(frozen=True)
class DataParallelTimes:
    """Data-parallel / ZeRO traffic of one step (seconds, one GPU)."""

    grad: np.ndarray
    """Per-step gradient reduction, before any overlap (the simulator schedules it)."""
    grad_exposed: np.ndarray
    """The part of `grad` the analytic model leaves exposed after the last backward."""
    per_step: np.ndarray
    """Exposed per-step traffic: `grad_exposed` plus the weight all-gather."""
    per_microbatch: np.ndarray
    """Exposed ZeRO-2/3 traffic per micro-batch."""


def dp_times(cluster: Cluster, job: Job, mesh: Mesh, dense_p: np.ndarray, expert_p: np.ndarray,
             fwd: np.ndarray, bwd: np.ndarray) -> DataParallelTimes:
    """Exposed data-parallel and ZeRO traffic.

    ZeRO-0 all-reduces gradients; ZeRO-1/2 reduce-scatter them and all-gather the updated
    bf16 weights (Megatron distributed optimizer); ZeRO-2 reduce-scatters every micro-batch;
    ZeRO-3/FSDP all-gathers weights for forward and backward and reduce-scatters gradients
    every micro-batch (Rajbhandari et al. 2020, Sec. 7; Zhao et al., PyTorch FSDP, VLDB 2023).
    Hybrid sharding adds an all-reduce of the shards across replicas.
    """
    P = mesh.plans
    full = mesh.members(cluster, Group.DP)
    shard = mesh.members(cluster, Group.DP_SHARD)
    repl = mesh.members(cluster, Group.DP_REPLICA)
    exp_full = mesh.members(cluster, Group.EDP)
    g = float(job.grad_bytes)
    z = P.zero
    ov = np.where(P.overlap_grad, cluster.overlap.dp, 0.0)

    def states(members: list[np.ndarray], params: np.ndarray) -> tuple[np.ndarray, ...]:
        rs = comm.reduce_scatter_time(cluster, members, g * params)
        ag = comm.all_gather_time(cluster, members, 2.0 * params)
        ar = comm.all_reduce_time(cluster, members, g * params)
        return rs, ag, ar

    rs_s, ag_s, _ = states(shard, dense_p)
    _, _, ar_f = states(full, dense_p)
    hybrid = comm.all_reduce_time(cluster, repl, g * dense_p / mesh.shard)
    e_rs, e_ag, e_ar = states(exp_full, expert_p)
    grad = np.where(z == 0, ar_f + e_ar, np.where(z == 1, rs_s + e_rs, 0.0)) + hybrid
    gather = np.where((z == 1) | (z == 2), ag_s + e_ag, 0.0)
    grad_exposed = np.maximum(grad - ov * bwd, 0.0)
    per_step = grad_exposed + np.maximum(gather - ov * fwd, 0.0)
    zero2_mb = np.where(z == 2, np.maximum(rs_s + e_rs - ov * bwd, 0.0), 0.0)
    zero3_comm = 2 * (ag_s + e_ag) + rs_s + e_rs
    zero3_mb = np.where(z == 3, np.maximum(zero3_comm - ov * (fwd + bwd), 0.0), 0.0)
    return DataParallelTimes(grad, grad_exposed, per_step, zero2_mb + zero3_mb)
