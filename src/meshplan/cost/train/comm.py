"""Exposed communication of a training step: per micro-batch (TP, CP, EP, PP) and per step
(data parallel, ZeRO/FSDP), after the overlap the engine achieves (`Cluster.overlap`, data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost import comm
from meshplan.cost.collectives import (
    cp_kv_bytes,
    cp_merge_bytes,
    cp_ring_steps,
    ep_all_to_all_bytes,
    ep_dispatch_combine_time,
    tp_block_bytes,
    tp_block_time,
    tp_blocks_per_layer,
)
from meshplan.cost.kernels import Kernels
from meshplan.cost.train.allocator import FSDP_PREFETCH_LAYERS
from meshplan.cost.train.passes import AttentionTimes
from meshplan.mesh import Group, Mesh
from meshplan.specs.cluster import Cluster
from meshplan.specs.job import Job
from meshplan.specs.model import Model

ACTIVATION_BYTES = 2.0
Num = float | np.ndarray


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


def ep_exposed(model: Model, cluster: Cluster, job: Job, mesh: Mesh, moe_layers: np.ndarray,
               window_fwd: Num = 0.0, window_bwd: Num = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Exposed expert dispatch + combine all-to-alls of one micro-batch: (forward, backward).

    Without overlap they block the layer (Megatron-Core's alltoall dispatcher waits on each).
    With `ep_comm_overlap` (Megatron-Core `--overlap-moe-expert-parallel-comm`, its "1F1B A2A
    overlap", after DeepSeek-V3's DualPipe, arXiv:2412.19437 Sec. 3.2.1) the forward of one
    micro-batch runs interleaved with the backward of another, layer by layer: a forward's
    all-to-alls hide behind the other micro-batch's backward compute of the layer
    (`window_bwd`, one MoE layer's backward) and a backward's behind the forward
    (`window_fwd`), and only what exceeds `overlap.ep_overlapped` of that window is exposed
    (the communication kernels take SMs and the chunks' dependencies leave gaps).
    """
    P = mesh.plans
    if model.moe is None:
        zero = np.zeros(len(P))
        return zero, zero
    tokens = mesh.tokens_per_microbatch(job.seq_len) / mesh.seq_shard
    a2a = ep_dispatch_combine_time(cluster, mesh.members(cluster, Group.EP), model, tokens,
                                   plateau=True, dispatcher=P.dispatchers())
    hide = cluster.overlap.ep_overlapped

    def exposed(window: Num) -> np.ndarray:
        return moe_layers * np.where(P.ep_overlap, np.maximum(a2a - hide * window, 0.0), a2a)

    return exposed(window_bwd), exposed(window_fwd)


def cp_exposed(model: Model, cluster: Cluster, job: Job, K: Kernels, mesh: Mesh,
               layers: np.ndarray, attn: AttentionTimes) -> tuple[np.ndarray, np.ndarray]:
    """Ring attention's cost beyond its blocks' compute, per micro-batch on one rank:
    (forward, backward). The blocks' own slowdown is in the attention core
    (`collectives.cp_block_efficiency`).

    Each of the cp - 1 steps after the local block (`collectives.cp_ring_steps`), in every
    attention layer and pass: the point-to-point exchange of the next K/V block (backward:
    K/V and their gradients), of which `overlap.cp` hides behind that step's block (the
    core's 1/cp: one exchange overlaps one step, so a small block leaves each exchange
    exposed, latency included); the merge of the step's partial result
    (`collectives.cp_merge_bytes`); and the fixed cost of the step's extra kernels
    (`Cluster.kernel_overhead`, as for a block). Ulysses-style (all-to-all) context
    parallelism is not modelled: meshplan's cp is the ring (Megatron-Core, torchtitan).
    """
    P = mesh.plans
    tier = mesh.tier_index(cluster, Group.CP)
    T = mesh.tokens_per_microbatch(job.seq_len)
    kv = cp_kv_bytes(model, T, P.tp)
    steps = layers * cp_ring_steps(P.cp)
    hide = cluster.overlap.cp

    def per_pass(nbytes: Num, core: np.ndarray, backward: bool) -> np.ndarray:
        exchange = np.maximum(comm.p2p_time(cluster, tier, nbytes) - hide * core / P.cp, 0.0)
        merge = K.memory(cp_merge_bytes(model, T, P.tp, backward))
        return steps * (exchange + merge + K.overhead)

    return per_pass(kv, attn.core_forward, False), per_pass(2 * kv, attn.core_backward, True)


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


FSDP_PREFETCH_DEPTH = FSDP_PREFETCH_LAYERS - 1
"""Layers whose all-gather may run ahead of the computing one: FSDP2 keeps two all-gather
outputs alive in forward (implicit prefetch) and prefetches the next layer in backward
(pytorch/pytorch#128884); DeepSpeed ZeRO-3 prefetches up to `stage3_prefetch_bucket_size`
(5e7) elements, at least one parameter ahead. With layers alike, any depth >= 1 gives the same
steady state (`prefetched_exposed`)."""


def prefetched_exposed(first: np.ndarray, per_layer: np.ndarray, window: np.ndarray,
                       n: np.ndarray) -> np.ndarray:
    """Exposed time of n layers' communication issued one layer ahead of their compute.

    `first` cannot overlap anything (the PyTorch FSDP notes: "the 1st all-gather will not be
    able to overlap with anything"); each of the other n - 1 layers' `per_layer` traffic runs
    behind one layer's compute `window` and sticks out by what it exceeds it. Compute that
    covers the traffic exposes exactly `first`; traffic that exceeds it sets the pace:
    first + (n - 1)(per_layer - window).
    """
    if FSDP_PREFETCH_DEPTH < 1:
        return first + (n - 1) * per_layer
    return first + (n - 1) * np.maximum(per_layer - window, 0.0)


PER_RANK_HOST_S = 6e-6
"""Host time per rank of one list-API collective (`Job.zero3_list_collectives`): DeepSpeed
before v0.5.5 builds the per-rank views in a Python loop (`flat_tensor.narrow(...)` for i in
range(world_size): partition_parameters.py `_allgather_param`, `_reduce_scatter_gradient`,
v0.3.15), and PyTorch's ProcessGroupNCCL copies each of them by one `copy_` (allgather's
post-hook, reduce_scatter's `flatten_for_scatter_gather`). About 3 us per eager view op
(PyTorch operator micro-benchmark, split on CUDA: 3.3 us, pytorch#32194) and 3 us per copy
launch (ATen dispatch and cudaMemcpyAsync); meshplan assumption within that sourcing."""


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
             fwd: np.ndarray, bwd: np.ndarray, layers: np.ndarray) -> DataParallelTimes:
    """Exposed data-parallel and ZeRO traffic (`fwd`, `bwd`: one micro-batch's passes through
    the rank's `layers` layers).

    ZeRO-0 all-reduces gradients; ZeRO-1/2 reduce-scatter them and all-gather the updated
    bf16 weights (Megatron distributed optimizer); ZeRO-2 reduce-scatters every micro-batch;
    ZeRO-3/FSDP all-gathers weights for forward and backward and reduce-scatters gradients
    every micro-batch (Rajbhandari et al. 2020, Sec. 7; Zhao et al., PyTorch FSDP, VLDB 2023).
    Hybrid sharding adds an all-reduce of the shards across replicas.

    ZeRO-3 runs layer by layer, prefetched `FSDP_PREFETCH_DEPTH` ahead (`prefetched_exposed`,
    one FSDP unit per layer as torchtitan, llm-foundry and Megatron-Core wrap them). The
    first layer's gather is exposed once per step (a later micro-batch's runs under the
    previous backward's tail); the backward gathers the other layers while reduce-scattering
    the ones done (the last layer stays gathered from its forward: torchtitan
    `reshard_after_forward=False` for the last block) and exposes the last reduce-scatter
    each micro-batch (FSDP2 reduce-scatters every micro-batch by default, and the end of its
    backward waits for it). With pipeline parallelism the stage's weights stay gathered between
    micro-batches and gradients reduce-scatter on the last one (torchtitan
    `reshard_after_forward = not pp_enabled`, `set_requires_gradient_sync(last_backward)`;
    `allocator.zero_buffers`): once per step.

    An engine that splits a layer's traffic into several collectives (`Job.zero3_collectives`:
    DeepSpeed ZeRO-3 before v0.5.5, one per parameter) pays the ring's latency, (n - 1) steps,
    again for each further one, and list-API collectives add `PER_RANK_HOST_S` per rank.
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
    # ZeRO-3, per layer of the rank (a rank without experts runs no expert collective): each
    # layer's all-gather and reduce-scatter is a collective of its own, priced at its own
    # size (its curve point, and the ring's (n - 1) latency steps every time).
    n = np.maximum(layers, 1.0)
    experts = expert_p > 0
    k_ag, k_rs = job.zero3_collectives
    more_ag, more_rs = _split_collectives(cluster, job, shard, k_ag, k_rs)
    def layer(members: list[np.ndarray], params: np.ndarray) -> tuple[np.ndarray, ...]:
        return (comm.all_gather_time(cluster, members, 2.0 * params / n),
                comm.reduce_scatter_time(cluster, members, g * params / n))

    ag, rs = layer(shard, dense_p)
    if np.any(experts & (z == 3)):
        e_ag_l, e_rs_l = layer(exp_full, expert_p)
        ag, rs = ag + np.where(experts, e_ag_l, 0.0), rs + np.where(experts, e_rs_l, 0.0)
    ag, rs = ag + more_ag, rs + more_rs
    f, b = ov * fwd / n, ov * bwd / n
    pipelined = P.pp > 1
    gathers = prefetched_exposed(0.0 * ag, ag, f, n)
    backward = np.where(pipelined, prefetched_exposed(rs, rs, b, n),
                        prefetched_exposed(rs, ag + rs, b, n))
    once = np.where(z == 3, ag + np.where(pipelined, gathers + backward, 0.0), 0.0)
    per_step = per_step + once
    zero3_mb = np.where((z == 3) & ~pipelined, gathers + backward, 0.0)
    return DataParallelTimes(grad, grad_exposed, per_step, zero2_mb + zero3_mb)


def _split_collectives(cluster: Cluster, job: Job, members: list[np.ndarray], k_ag: int,
                       k_rs: int) -> tuple[np.ndarray | float, np.ndarray | float]:
    """What a layer's ZeRO-3 (all-gather, reduce-scatter) costs beyond one collective each:
    the ring latency of every further collective and, with the list API, the host time per
    rank of every collective."""
    if (k_ag, k_rs) == (1, 1) and not job.zero3_list_collectives:
        return 0.0, 0.0
    latency = comm.all_gather_time(cluster, members, 0.0)  # (n - 1) alpha, no bytes
    host = members[-1] * PER_RANK_HOST_S if job.zero3_list_collectives else 0.0
    return (k_ag - 1) * latency + k_ag * host, (k_rs - 1) * latency + k_rs * host
